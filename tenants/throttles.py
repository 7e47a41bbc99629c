"""Rate limits (DRF throttles on the shared cache). A throttled request gets 429 rate_limited
with Retry-After.

- secret key: one budget per key (`api_key`, THROTTLE_KEY_RATE);
- publishable key: it is public and shared by every visitor, so a budget per key would let
  one visitor spend everyone's. Its budget is per (key, client IP) (`publishable`,
  THROTTLE_PUBLISHABLE_RATE), and views that set `throttle_bucket = "submit"` count in a
  separate per (key, client IP) bucket (`publishable_submit`,
  THROTTLE_PUBLISHABLE_SUBMIT_RATE), so spent event traffic never blocks a submit;
- no valid key: per client IP (`anon_ip`, THROTTLE_ANON_RATE).

The client IP is `core.clientip.client_ip` (X-Forwarded-For only through TRUSTED_PROXY_COUNT
proxies), never DRF's own reading of the whole header, which a client can rotate.
"""

from django.conf import settings
from rest_framework.throttling import SimpleRateThrottle

from core.clientip import client_ip

SUBMIT_BUCKET = "submit"


class _AtlasThrottle(SimpleRateThrottle):
    def get_rate(self):
        # Read at call time (not import time) so settings overrides apply.
        from rest_framework.settings import api_settings

        return api_settings.DEFAULT_THROTTLE_RATES[self.scope]

    def get_ident(self, request):
        return client_ip(request)

    def allow_request(self, request, view):
        if not settings.THROTTLE_ENABLED:
            return True
        return super().allow_request(request, view)


class ApiKeyRateThrottle(_AtlasThrottle):
    scope = "api_key"

    def allow_request(self, request, view):
        principal = getattr(request, "auth", None)
        if getattr(principal, "kind", None) == "publishable":
            # The bucket depends on the view: pick its rate before counting.
            bucket = getattr(view, "throttle_bucket", None)
            self.scope = "publishable_submit" if bucket == SUBMIT_BUCKET else "publishable"
            self.rate = self.get_rate()
            self.num_requests, self.duration = self.parse_rate(self.rate)
        return super().allow_request(request, view)

    def get_cache_key(self, request, view):
        principal = getattr(request, "auth", None)
        key_id = getattr(principal, "key_id", None)
        if key_id is None:
            return None
        # a publishable key's buckets are per visitor: (key, client IP)
        ident = key_id if self.scope == "api_key" else f"{key_id}:{self.get_ident(request)}"
        return self.cache_format % {"scope": self.scope, "ident": ident}


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
