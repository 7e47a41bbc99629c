"""Rate limits per API key and per anonymous IP (DRF throttles on the shared cache).

A throttled request gets 429 rate_limited with Retry-After.
"""

from django.conf import settings
from rest_framework.throttling import SimpleRateThrottle


class _AtlasThrottle(SimpleRateThrottle):
    def get_rate(self):
        # Read at call time (not import time) so settings overrides apply.
        from rest_framework.settings import api_settings

        return api_settings.DEFAULT_THROTTLE_RATES[self.scope]

    def allow_request(self, request, view):
        if not settings.THROTTLE_ENABLED:
            return True
        return super().allow_request(request, view)


class ApiKeyRateThrottle(_AtlasThrottle):
    scope = "api_key"

    def get_cache_key(self, request, view):
        key_id = getattr(getattr(request, "auth", None), "key_id", None)
        if key_id is None:
            return None
        return self.cache_format % {"scope": self.scope, "ident": key_id}


class IpRateThrottle(_AtlasThrottle):
    """Per client IP; used directly by authentication for requests without a valid key."""

    scope = "anon_ip"

    def get_cache_key(self, request, view):
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}


class AnonymousIpRateThrottle(IpRateThrottle):
    """Views without key authentication (e.g. health) are limited per IP."""

    def get_cache_key(self, request, view):
        if getattr(getattr(request, "auth", None), "key_id", None) is not None:
            return None
        return super().get_cache_key(request, view)
