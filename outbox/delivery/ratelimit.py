"""A target's rate limit, shared by every worker: the target's row holds the next free slot.

One statement reserves the claimed jobs' slots that fall within the horizon (the rest are
handed back without an attempt), on the database's clock so the workers' clocks don't matter.
"""

from __future__ import annotations

import time
from collections import defaultdict

from django.db import connection

from outbox.delivery.record import backoff_cap
from outbox.delivery.send import Job, Result

RATE_HORIZON_SECONDS = 1.0

_RESERVE_SQL = """
WITH o AS (
    SELECT t.id, t.rate_limit_per_second AS rate, c.now, GREATEST(t.rate_next_at, c.now) AS start
    FROM outbox_target t, LATERAL (SELECT clock_timestamp() AS now) c
    WHERE t.id = %(target)s AND t.rate_limit_per_second > 0
    FOR NO KEY UPDATE OF t
), fit AS (
    -- clamped as a float first: a huge rate or a far slot must not overflow the int
    SELECT o.*, LEAST(%(wanted)s, GREATEST(0,
        floor((%(horizon)s - extract(epoch FROM o.start - o.now)) * o.rate) + 1))::int AS n
    FROM o
)
UPDATE outbox_target t SET rate_next_at = fit.start + make_interval(secs => fit.n / fit.rate)
FROM fit WHERE t.id = fit.id
RETURNING extract(epoch FROM fit.start - fit.now)::float8, fit.n, fit.rate
"""

_HOLD_BACK_SQL = """
UPDATE outbox_target SET rate_next_at = GREATEST(rate_next_at,
    clock_timestamp() + make_interval(secs => %s)) WHERE id = %s
"""


def slots_reserve(jobs: list[Job]) -> None:
    """Rate-limited targets: a send time for the jobs that fit, a deferral for the rest."""
    limited: dict[str, list[Job]] = defaultdict(list)
    for job in jobs:
        if job.rate_limit:
            limited[job.target_id].append(job)
    for target_id, queue in limited.items():
        with connection.cursor() as cursor:
            cursor.execute(
                _RESERVE_SQL,
                {"target": target_id, "wanted": len(queue), "horizon": RATE_HORIZON_SECONDS},
            )
            row = cursor.fetchone()
        if row is None:  # the limit was lifted meanwhile
            continue
        first_in_seconds, fitting, rate = row
        base = time.monotonic()
        for i, job in enumerate(queue):
            if i < fitting:
                job.send_at = base + first_in_seconds + i / rate
            else:
                job.defer_seconds = first_in_seconds + fitting / rate


def slack_retry_after_honour(results: list[Result]) -> None:
    """A 429 with Retry-After from a rate-limited target (Slack) holds back every send
    to it, by every worker, not only the delivery that got it: its next free slot moves."""
    wait: dict[str, float] = {}
    for r in results:
        if r.status_code == 429 and r.retry_after and r.job.rate_limit:
            seconds = min(r.retry_after, backoff_cap(r.job))  # a silly value: not forever
            wait[r.job.target_id] = max(wait.get(r.job.target_id, 0.0), seconds)
    for target_id, seconds in wait.items():
        with connection.cursor() as cursor:
            cursor.execute(_HOLD_BACK_SQL, [seconds, target_id])
