"""CORS for publishable keys.

A preflight (OPTIONS) carries no Authorization header, so it succeeds for any origin that some
active publishable key lists; the real request is then checked against its own key's list in
tenants.auth (403 origin_not_allowed).

Under ASGI (the realtime server) corsheaders runs its checks, and so our signal handler,
synchronously on the event loop, where the ORM refuses to run (SynchronousOnlyOperation: a
500 for every request with an Origin header whenever the shared origins cache was cold).
`CorsMiddleware` below therefore loads the allowed origins in a worker thread first and hands
them to the handler on the request; on the event loop the handler itself never queries.
"""

from __future__ import annotations

import asyncio
import logging

from asgiref.sync import sync_to_async
from corsheaders.middleware import CorsMiddleware as _CorsHeadersMiddleware
from django.core.cache import cache

logger = logging.getLogger("tenants.cors")
_ORIGINS_CACHE_KEY = "atlas:cors:origins"
_REQUEST_ATTRIBUTE = "_atlas_allowed_origins"


def allowed_origins_union() -> set[str]:
    origins = cache.get(_ORIGINS_CACHE_KEY)
    if origins is None:
        from tenants.models import ApiKey
        from tenants.rls import system_scope

        # a preflight carries no key: the union of every tenant's publishable origins
        with system_scope("CORS origins of every publishable key"):
            rows = list(
                ApiKey.objects.filter(
                    kind=ApiKey.Kind.PUBLISHABLE, revoked_at__isnull=True, tenant__is_active=True
                ).values_list("allowed_origins", flat=True)
            )
        origins = sorted({origin for row in rows for origin in row})
        cache.set(_ORIGINS_CACHE_KEY, origins, timeout=60)
    return set(origins)


def origins_cache_clear() -> None:
    cache.delete(_ORIGINS_CACHE_KEY)


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _origins_for(request) -> set[str]:
    preloaded = getattr(request, _REQUEST_ATTRIBUTE, None)
    if preloaded is not None:
        return preloaded
    if _on_event_loop():  # not loaded by our middleware: never the ORM here; cached or none
        logger.warning("CORS origins looked up on the event loop; use tenants.cors.CorsMiddleware")
        return set(cache.get(_ORIGINS_CACHE_KEY) or ())
    return allowed_origins_union()


def origin_allowed_for_preflight(sender, request, **kwargs) -> bool:
    origin = request.headers.get("Origin")
    return bool(origin) and origin.lower() in _origins_for(request)


class CorsMiddleware(_CorsHeadersMiddleware):
    """corsheaders' middleware; under ASGI it first loads the allowed origins off the loop."""

    async def __acall__(self, request):
        if "origin" in request.headers:
            origins = await sync_to_async(allowed_origins_union)()
            setattr(request, _REQUEST_ATTRIBUTE, origins)
        return await super().__acall__(request)
