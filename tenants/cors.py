"""CORS for publishable keys.

A preflight (OPTIONS) carries no Authorization header, so it succeeds for any origin that some
active publishable key lists; the real request is then checked against its own key's list in
tenants.auth (403 origin_not_allowed).
"""

from __future__ import annotations

from django.core.cache import cache

_ORIGINS_CACHE_KEY = "atlas:cors:origins"


def allowed_origins_union() -> set[str]:
    origins = cache.get(_ORIGINS_CACHE_KEY)
    if origins is None:
        from tenants.models import ApiKey

        rows = ApiKey.objects.filter(
            kind=ApiKey.Kind.PUBLISHABLE, revoked_at__isnull=True
        ).values_list("allowed_origins", flat=True)
        origins = sorted({origin for row in rows for origin in row})
        cache.set(_ORIGINS_CACHE_KEY, origins, timeout=60)
    return set(origins)


def origins_cache_clear() -> None:
    cache.delete(_ORIGINS_CACHE_KEY)


def origin_allowed_for_preflight(sender, request, **kwargs) -> bool:
    origin = request.headers.get("Origin")
    return bool(origin) and origin.lower() in allowed_origins_union()
