"""Writes for tenants and API keys (keyword-only, <entity>_<verb>)."""

from __future__ import annotations

import dataclasses
import json
import secrets
import string
import time

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from core.errors import DomainError, ErrorKind
from tenants import keycache, rls
from tenants.cors import origins_cache_clear
from tenants.models import ApiKey, Tenant
from tenants.onboarding import tenant_setup_run

_PREFIX_ALPHABET = string.ascii_lowercase + string.digits
KIND_PREFIX: dict[str, str] = {ApiKey.Kind.PUBLISHABLE: "pk", ApiKey.Kind.SECRET: "sk"}


def tenant_create(*, name: str) -> Tenant:
    """A tenant and, in the same transaction, the defaults other apps registered for every
    new tenant (tenants.onboarding, e.g. outbox targets from N8N_WEBHOOK_URL)."""
    name = (name or "").strip()
    if not name:
        raise DomainError("invalid_tenant_name", "A tenant needs a name.")
    with transaction.atomic():
        if Tenant.objects.filter(name=name).exists():
            raise DomainError(
                "tenant_exists", f"A tenant named {name!r} exists already.", kind=ErrorKind.CONFLICT
            )
        tenant = Tenant.objects.create(name=name)
        tenant_setup_run(tenant=tenant)
    return tenant


def _normalise_origins(origins: list[str] | None) -> list[str]:
    cleaned = []
    for origin in origins or []:
        origin = origin.strip().rstrip("/")
        if not origin:
            continue
        if (
            not (origin.startswith("http://") or origin.startswith("https://"))
            or origin.count("/") != 2
        ):
            raise DomainError(
                "invalid_origin",
                f"{origin!r} is not an origin (scheme://host[:port], no path).",
                details={"origin": origin},
            )
        cleaned.append(origin.lower())
    return sorted(set(cleaned))


def apikey_create(
    *, tenant: Tenant, kind: str, name: str = "", allowed_origins: list[str] | None = None
) -> tuple[ApiKey, str]:
    """Create a key; returns the row and the full key, which is never retrievable again."""
    if kind not in ApiKey.Kind.values:
        raise DomainError("invalid_key_kind", "kind must be 'publishable' or 'secret'.")
    prefix = f"{KIND_PREFIX[kind]}_" + "".join(secrets.choice(_PREFIX_ALPHABET) for _ in range(8))
    raw_key = f"{prefix}_{secrets.token_urlsafe(32)}"
    key = ApiKey.objects.create(
        tenant=tenant,
        kind=kind,
        name=name,
        prefix=prefix,
        key_hash=keycache.key_digest(raw_key),
        allowed_origins=_normalise_origins(allowed_origins),
    )
    transaction.on_commit(origins_cache_clear)
    return key, raw_key


def apikey_revoke(*, key: ApiKey) -> bool:
    """Revoke at once: the row is marked, the cached verification is distrusted everywhere
    and open realtime streams of the key are told to end (NOTIFY, sent at commit)."""
    with transaction.atomic():
        updated = ApiKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(
            revoked_at=timezone.now()
        )
        if updated:
            _announce_key_change(tenant_id=key.tenant_id, key_id=key.pk)
        _distrust_cached([key.key_hash])
    transaction.on_commit(origins_cache_clear)
    return bool(updated)


def tenant_deactivate(*, tenant: Tenant) -> bool:
    """Disable a tenant: its keys are refused at once (whatever API_KEY_CACHE_TTL_SECONDS
    says) and its open realtime streams end. Returns False when it was inactive already; for
    a tenant saved inactive elsewhere first (a model form) the keys are still distrusted and
    the streams ended, so such a path calls this right after saving."""
    return _tenant_active_set(tenant=tenant, active=False)


def tenant_activate(*, tenant: Tenant) -> bool:
    return _tenant_active_set(tenant=tenant, active=True)


def _tenant_active_set(*, tenant: Tenant, active: bool) -> bool:
    with transaction.atomic():
        updated = Tenant.objects.filter(pk=tenant.pk, is_active=not active).update(
            is_active=active, updated_at=timezone.now()
        )
        digests = list(ApiKey.objects.filter(tenant=tenant).values_list("key_hash", flat=True))
        if not active:  # also when saved inactive elsewhere first (the admin form)
            _announce_key_change(tenant_id=tenant.pk, key_id=None)
        _distrust_cached(digests)
    transaction.on_commit(origins_cache_clear)
    tenant.is_active = active
    return bool(updated)


def _distrust_cached(digests: list[str]) -> None:
    # Now and again after commit: a request that read the row before the commit and writes
    # the cache after it wrote under the old generation, so its entry is never trusted.
    keycache.cache_invalidate(digests)
    transaction.on_commit(lambda: keycache.cache_invalidate(digests))


def _announce_key_change(*, tenant_id, key_id) -> None:
    """NOTIFY in the current transaction: delivered at commit, never for a rollback."""
    payload = json.dumps({"tenantId": str(tenant_id), "keyId": str(key_id) if key_id else None})
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_notify(%s, %s)", [keycache.KEY_CHANGES_CHANNEL, payload])


def apikey_cache_invalidate_all() -> int:
    digests = list(ApiKey.objects.values_list("key_hash", flat=True))
    keycache.cache_invalidate(digests)
    keycache.stats.reset()
    origins_cache_clear()
    return len(digests)


# The key table is looked up by hash before any tenant is known: the one read of it that no
# tenant scope can cover. Key hashes are SHA-256 of 190-bit secrets, so seeing them grants
# nothing; the scope ends with the lookup.
@rls.system_scope("api key lookup by hash")
def apikey_authenticate(*, raw_key: str) -> keycache.ApiKeyPrincipal:
    """Verify a key (cache first); raises DomainError UNAUTHENTICATED for an unknown, revoked
    or disabled tenant's key."""
    digest = keycache.key_digest(raw_key)
    cached = keycache.cache_lookup(digest)
    if cached.refusal == keycache.REVOKED:
        raise _unauthenticated("api_key_revoked", "The API key has been revoked.")
    if cached.refusal is not None:
        raise _unauthenticated("invalid_api_key", "The API key is not valid.")
    if cached.principal is not None:
        return _touch_last_used(digest, cached.principal, cached)

    row = (
        ApiKey.objects.filter(key_hash=digest)
        .values(
            "id",
            "tenant_id",
            "kind",
            "prefix",
            "allowed_origins",
            "revoked_at",
            "last_used_at",
            "tenant__is_active",
        )
        .first()
    )
    if row is None:
        keycache.cache_put_refusal(digest, keycache.INVALID)
        raise _unauthenticated("invalid_api_key", "The API key is not valid.")
    if row["revoked_at"] is not None:
        keycache.cache_put_refusal(digest, keycache.REVOKED)
        raise _unauthenticated("api_key_revoked", "The API key has been revoked.")
    if not row["tenant__is_active"]:
        raise _unauthenticated("tenant_inactive", "The tenant of this key is disabled.")
    principal = keycache.ApiKeyPrincipal(
        key_id=str(row["id"]),
        tenant_id=str(row["tenant_id"]),
        kind=row["kind"],
        prefix=row["prefix"],
        allowed_origins=tuple(row["allowed_origins"] or ()),
        last_used_at=row["last_used_at"].timestamp() if row["last_used_at"] else None,
    )
    fresh = _touch_last_used(digest, principal, cached)
    if fresh is principal:  # not re-cached by the touch: cache it now
        keycache.cache_put(digest, principal, generation=cached.generation)
    return fresh


def _unauthenticated(code: str, message: str) -> DomainError:
    return DomainError(code, message, kind=ErrorKind.UNAUTHENTICATED)


def _touch_last_used(
    digest: str, principal: keycache.ApiKeyPrincipal, cached: keycache.Lookup
) -> keycache.ApiKeyPrincipal:
    """Write last_used_at at most once per resolution window, so bursts cost no writes.

    The write is also a check: it only touches an unrevoked key, so a revocation that this
    request's cached verification predates is caught here. Re-caching keeps the entry's
    generation and absolute expiry: a touch never extends or revives a verification."""
    now = time.time()
    window = settings.API_KEY_LAST_USED_RESOLUTION_SECONDS
    if principal.last_used_at is not None and now - principal.last_used_at < window:
        return principal
    touched = ApiKey.objects.filter(pk=principal.key_id, revoked_at__isnull=True).update(
        last_used_at=timezone.now()
    )
    if not touched:
        keycache.cache_invalidate([digest])
        raise _unauthenticated("api_key_revoked", "The API key has been revoked.")
    fresh = dataclasses.replace(principal, last_used_at=now)
    keycache.cache_put(digest, fresh, generation=cached.generation, expires_at=cached.expires_at)
    return fresh
