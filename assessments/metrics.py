"""Counters for best-effort paths, kept in the shared Django cache (not the database:
they count the moments the database could not be written).

Shown in the admin above the analytics events list and by `assessments_stats`.
"""

from __future__ import annotations

import logging

from django.core.cache import cache
from django.utils import timezone

logger = logging.getLogger(__name__)

FAILURES_KEY = "assessments:events:store_failures"
LOST_KEY = "assessments:events:lost_events"
LAST_KEY = "assessments:events:last_store_failure"
_FOREVER = None


def _incr(key: str, by: int) -> None:
    # add() then incr(): the counter survives restarts of any one process (shared cache).
    cache.add(key, 0, timeout=_FOREVER)
    try:
        cache.incr(key, by)
    except ValueError:  # evicted between add and incr
        cache.set(key, by, timeout=_FOREVER)


def events_store_failure_record(*, tenant_id, count: int, error: Exception) -> None:
    try:
        _incr(FAILURES_KEY, 1)
        _incr(LOST_KEY, count)
        cache.set(
            LAST_KEY,
            {
                "at": timezone.now().isoformat(),
                "tenant_id": str(tenant_id),
                "events": count,
                "error": f"{type(error).__name__}: {error}"[:500],
            },
            timeout=_FOREVER,
        )
    except Exception:  # a counter must never turn a best-effort 200 into a 500
        logger.exception("could not count an events storage failure")


def events_store_failures() -> dict:
    return {
        "failures": cache.get(FAILURES_KEY, 0),
        "lost_events": cache.get(LOST_KEY, 0),
        "last": cache.get(LAST_KEY),
    }
