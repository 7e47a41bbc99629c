"""Verified API keys, cached in the shared Django cache.

A burst of requests with one key costs one database lookup per TTL. The cache is the
configured Django cache (a file cache under var/ shared by every process on the host, or
Redis with REDIS_URL), so a revocation reaches every process at once.

A cached verification is trusted only while both hold:
- its absolute expiry (`expiresAt`, set from the database lookup: later writes of the entry,
  such as the last-used touch, never move it);
- its generation matches the key's current generation in the cache. Revoking a key or
  deactivating its tenant replaces the generation (before and after the commit), so an entry
  written by a request that verified the key just before - and wrote the cache just after -
  is stale when read. A generation missing from the cache (evicted) is replaced by a new one,
  so an eviction fails closed: one extra database lookup, never a stale trust.
Hit/miss counters are per process (the stats endpoint says which process answered).
"""

from __future__ import annotations

import hashlib
import math
import os
import secrets
import threading
import time
from dataclasses import asdict, dataclass, field

from django.conf import settings
from django.core.cache import cache

CACHE_PREFIX = "atlas:apikey:"
GENERATION_PREFIX = "atlas:apikey-gen:"
INVALID = "invalid"
REVOKED = "revoked"
# NOTIFY channel: a key was revoked or its tenant deactivated (payload: JSON tenantId, keyId
# or null for every key of the tenant). Sent in the revoking transaction; open realtime
# streams of that key end when it arrives.
KEY_CHANGES_CHANNEL = "atlas_apikey_changes"


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


@dataclass(frozen=True)
class Lookup:
    """The cache's answer: a trusted principal, a known-bad key, or a miss. `generation` is
    read before the database lookup that follows a miss and stored with its result."""

    principal: ApiKeyPrincipal | None = None
    refusal: str | None = None  # INVALID or REVOKED
    generation: str | None = None
    expires_at: float | None = None


def key_digest(raw_key: str) -> str:
    # Keys are 190+ bits of randomness, so a fast hash is safe (as for GitHub/Stripe tokens).
    return hashlib.sha256(raw_key.encode()).hexdigest()


def cache_key_for(digest: str) -> str:
    return CACHE_PREFIX + digest


def generation_key_for(digest: str) -> str:
    return GENERATION_PREFIX + digest


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


def _new_generation() -> str:
    return secrets.token_hex(8)


def _current_generation(digest: str, found) -> str:
    if found is not None:
        return found
    # missing (never set, or evicted): a new one; add() so concurrent readers agree
    cache.add(generation_key_for(digest), _new_generation(), timeout=None)
    return cache.get(generation_key_for(digest)) or _new_generation()


def cache_lookup(digest: str) -> Lookup:
    if not cache_enabled():
        return Lookup()
    entry_key, generation_key = cache_key_for(digest), generation_key_for(digest)
    found = cache.get_many([entry_key, generation_key])
    entry = found.get(entry_key)
    if entry in (INVALID, REVOKED):
        stats.record(hit=True)
        return Lookup(refusal=entry)
    generation = _current_generation(digest, found.get(generation_key))
    if not (
        isinstance(entry, dict)
        and entry.get("generation") == generation
        and entry.get("expiresAt", 0) > time.time()
    ):
        stats.record(hit=False)
        return Lookup(generation=generation)
    stats.record(hit=True)
    return Lookup(
        principal=ApiKeyPrincipal.from_cache(entry["principal"]),
        generation=generation,
        expires_at=entry["expiresAt"],
    )


def cache_put(
    digest: str,
    principal: ApiKeyPrincipal,
    *,
    generation: str | None,
    expires_at: float | None = None,
) -> None:
    """Store a verification made under `generation`; `expires_at` is kept when re-writing."""
    if not cache_enabled() or generation is None:
        return
    now = time.time()
    if expires_at is None:
        expires_at = now + settings.API_KEY_CACHE_TTL_SECONDS
    timeout = math.ceil(expires_at - now)
    if timeout <= 0:
        return
    entry = {"principal": principal.to_cache(), "generation": generation, "expiresAt": expires_at}
    cache.set(cache_key_for(digest), entry, timeout=timeout)


def cache_put_refusal(digest: str, refusal: str) -> None:
    """An unknown (INVALID) or revoked (REVOKED) key, both final: refused without a lookup."""
    if cache_enabled():
        cache.set(cache_key_for(digest), refusal, timeout=settings.API_KEY_CACHE_TTL_SECONDS)


def cache_invalidate(digests: list[str]) -> None:
    """Distrust every cached verification of these keys, including one being written now."""
    if not digests:
        return
    cache.delete_many([cache_key_for(d) for d in digests])
    cache.set_many({generation_key_for(d): _new_generation() for d in digests}, timeout=None)


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
