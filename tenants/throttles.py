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

Key budgets are counted in batches (`GrantedBatches`): a process takes up to GRANT_BATCH_MAX
requests of a budget at once from the shared history (one cache write), then spends them
locally, so a burst of requests (a tus upload's PATCHes) writes the shared cache once per
batch instead of once per request. A batch is 1/GRANT_BATCH_DIVISOR of the budget at most, so
budgets below GRANT_BATCH_DIVISOR requests stay exact; above it, a batch taken and not spent
counts as spent (each process can strand at most one batch per bucket until the window ends).
"""

import threading

from django.conf import settings
from rest_framework.throttling import SimpleRateThrottle

from core.clientip import client_ip

SUBMIT_BUCKET = "submit"
GRANT_BATCH_MAX = 50
GRANT_BATCH_DIVISOR = 100
MAX_GRANTS = 10_000


class GrantedBatches:
    """Per process: requests this process has already counted in a shared budget's history
    and may still spend, per throttle cache key, until the window of the batch ends."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._grants: dict[str, tuple[int, float, str]] = {}  # key → (left, until, rate)

    def spend(self, key: str, *, now: float, rate: str) -> bool:
        with self._lock:
            left, until, granted_rate = self._grants.get(key, (0, 0.0, ""))
            if left <= 0 or now >= until or granted_rate != rate:
                return False
            self._grants[key] = (left - 1, until, rate)
            return True

    def grant(self, key: str, *, left: int, until: float, rate: str, now: float) -> None:
        with self._lock:
            if len(self._grants) >= MAX_GRANTS:
                self._grants = {k: v for k, v in self._grants.items() if v[1] > now}
            self._grants[key] = (left, until, rate)

    def clear(self) -> None:
        with self._lock:
            self._grants.clear()


granted = GrantedBatches()


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
        if not settings.THROTTLE_ENABLED:
            return True
        batch = min(GRANT_BATCH_MAX, (self.num_requests or 0) // GRANT_BATCH_DIVISOR)
        if batch <= 1:
            return super().allow_request(request, view)  # DRF's exact count
        self.key = self.get_cache_key(request, view)
        if self.key is None:
            return True
        self.now = self.timer()
        if granted.spend(self.key, now=self.now, rate=self.rate):
            return True
        return self._take_batch(batch)

    def _take_batch(self, batch: int) -> bool:
        """DRF's sliding window, where one history entry per request of the batch is written
        at once: the shared history stays DRF's format, so every throttle reads it alike."""
        self.history = self.cache.get(self.key, [])
        while self.history and self.history[-1] <= self.now - self.duration:
            self.history.pop()
        free = self.num_requests - len(self.history)
        if free <= 0:
            return self.throttle_failure()
        take = min(batch, free)
        self.history[:0] = [self.now] * take
        self.cache.set(self.key, self.history, self.duration)
        granted.grant(self.key, left=take - 1, until=self.now + self.duration, rate=self.rate,
                      now=self.now)  # fmt: skip
        return True

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
