"""Verified API keys, cached in the shared Django cache.

A burst of requests with one key costs one database lookup per TTL. The cache is the
configured Django cache (a file cache under var/ shared by every process on the host, or
Redis with REDIS_URL), so a revocation deletes the entry for every process at once.
Hit/miss counters are per process (the stats endpoint says which process answered).
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import asdict, dataclass, field

from django.conf import settings
from django.core.cache import cache

CACHE_PREFIX = "atlas:apikey:"
INVALID = "invalid"


@dataclass(frozen=True)
class ApiKeyPrincipal:
    """What a request knows about the key that authenticated it (DRF's request.auth/user)."""

    key_id: str
    tenant_id: str
    kind: str
    prefix: str
    allowed_origins: tuple[str, ...] = field(default_factory=tuple)
    last_used_at: float | None = None

    is_authenticated = True
    is_staff = False

    @property
    def is_secret(self) -> bool:
        return self.kind == "secret"

    def to_cache(self) -> dict:
        data = asdict(self)
        data["allowed_origins"] = list(self.allowed_origins)
        return data

    @classmethod
    def from_cache(cls, data: dict) -> ApiKeyPrincipal:
        return cls(**{**data, "allowed_origins": tuple(data.get("allowed_origins") or ())})


def key_digest(raw_key: str) -> str:
    # Keys are 190+ bits of randomness, so a fast hash is safe (as for GitHub/Stripe tokens).
    return hashlib.sha256(raw_key.encode()).hexdigest()


def cache_key_for(digest: str) -> str:
    return CACHE_PREFIX + digest


class _Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def record(self, hit: bool):
        with self.lock:
            if hit:
                self.hits += 1
            else:
                self.misses += 1

    def reset(self):
        with self.lock:
            self.hits = self.misses = 0


stats = _Stats()


def cache_enabled() -> bool:
    return settings.API_KEY_CACHE_ENABLED


def cache_get(digest: str):
    """The cached principal, INVALID for a known-bad key, or None when not cached."""
    if not cache_enabled():
        return None
    value = cache.get(cache_key_for(digest))
    stats.record(hit=value is not None)
    if value is None or value == INVALID:
        return value
    return ApiKeyPrincipal.from_cache(value)


def cache_put(digest: str, value) -> None:
    if not cache_enabled():
        return
    payload = value.to_cache() if isinstance(value, ApiKeyPrincipal) else value
    cache.set(cache_key_for(digest), payload, timeout=settings.API_KEY_CACHE_TTL_SECONDS)


def cache_delete(digests: list[str]) -> None:
    cache.delete_many([cache_key_for(d) for d in digests])


def cache_stats(known_digests: list[str]) -> dict:
    size = len(cache.get_many([cache_key_for(d) for d in known_digests])) if known_digests else 0
    total = stats.hits + stats.misses
    return {
        "enabled": cache_enabled(),
        "ttlSeconds": settings.API_KEY_CACHE_TTL_SECONDS,
        "size": size,
        "hits": stats.hits,
        "misses": stats.misses,
        "hitRate": round(stats.hits / total, 4) if total else None,
        "scope": {"counters": "process", "pid": os.getpid(), "size": "shared cache"},
    }
