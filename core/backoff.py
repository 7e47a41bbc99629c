"""Retry timing: exponential backoff with jitter, and the server's Retry-After when it says so."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

JITTER = 0.2  # ±20 %: workers retrying one outage do not hit the receiver in lockstep


def backoff_seconds(*, attempt: int, base: float, cap: float, rng=random) -> float:
    """Delay after the `attempt`-th failed try (1-based): base × 2^(attempt-1), ±20 %, ≤ cap.

    At the cap the delay is still spread (80-100 % of it): clamping the jittered value would
    send every long-failing delivery back at the very same moment."""
    jittered = base * (2 ** max(0, attempt - 1)) * rng.uniform(1 - JITTER, 1 + JITTER)
    if jittered <= cap:
        return jittered
    return cap * rng.uniform(1 - JITTER, 1.0)


def retry_after_seconds(value: str | None, *, now: datetime | None = None) -> float | None:
    """Parse Retry-After: delta-seconds or an HTTP date. None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # "²".isdigit() is true too
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
