"""Circuit breaker per target, shared by every worker: the state is the target's row.

closed --5 consecutive failures--> open --60 s--> half_open (one probe at a time)
half_open --3 successes--> closed;  half_open --a failure--> open.
Every change is one locking UPDATE (old state read under the row lock), logged as a
CircuitTransition row and a warning.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import datetime, timedelta

from django.db import connection

from outbox import conf, operator_events
from outbox.delivery.send import Result
from outbox.models import CircuitTransition, Target

logger = logging.getLogger("outbox.circuit")

GONE_REASON = "410 Gone from the receiver"

# the states the statements below compare with and write (parameters of every statement)
_STATES = {
    "closed": Target.Circuit.CLOSED,
    "open": Target.Circuit.OPEN,
    "half_open": Target.Circuit.HALF_OPEN,
}

_FAILURE_SQL = """
UPDATE outbox_target t SET
    circuit_failures = t.circuit_failures + %(n)s,
    circuit_successes = 0,
    circuit_state = CASE
        WHEN o.old = %(half_open)s OR t.circuit_failures + %(n)s >= %(threshold)s THEN %(open)s
        ELSE t.circuit_state END,
    circuit_opened_at = CASE
        WHEN o.old <> %(open)s
         AND (o.old = %(half_open)s OR t.circuit_failures + %(n)s >= %(threshold)s)
        THEN %(now)s ELSE t.circuit_opened_at END,
    circuit_probe_until = NULL
FROM (SELECT id, circuit_state AS old FROM outbox_target WHERE id = %(id)s FOR UPDATE) o
WHERE t.id = o.id
RETURNING t.tenant_id, o.old, t.circuit_state
"""

# Writes only when there is something to reset: a healthy target costs no row write.
_SUCCESS_SQL = """
UPDATE outbox_target t SET
    circuit_failures = 0,
    circuit_successes = CASE WHEN o.old = %(half_open)s THEN t.circuit_successes + %(n)s ELSE 0 END,
    circuit_state = CASE
        WHEN o.old = %(half_open)s AND t.circuit_successes + %(n)s >= %(close)s THEN %(closed)s
        ELSE t.circuit_state END,
    circuit_opened_at = CASE
        WHEN o.old = %(half_open)s AND t.circuit_successes + %(n)s >= %(close)s THEN NULL
        ELSE t.circuit_opened_at END,
    circuit_probe_until = NULL
FROM (SELECT id, circuit_state AS old FROM outbox_target
      WHERE id = %(id)s AND (circuit_failures > 0 OR circuit_state <> %(closed)s) FOR UPDATE) o
WHERE t.id = o.id
RETURNING t.tenant_id, o.old, t.circuit_state
"""

# Open long enough (or a half-open probe lease expired): this worker takes the one probe.
_PROBE_SQL = """
UPDATE outbox_target t SET circuit_state = %(half_open)s, circuit_probe_until = %(lease_until)s,
    circuit_successes = CASE WHEN o.old = %(open)s THEN 0 ELSE t.circuit_successes END
FROM (SELECT id, circuit_state AS old FROM outbox_target
      WHERE paused_at IS NULL AND (
          (circuit_state = %(open)s AND circuit_opened_at <= %(reopen_before)s)
       OR (circuit_state = %(half_open)s
           AND (circuit_probe_until IS NULL OR circuit_probe_until < %(now)s)))
      FOR UPDATE SKIP LOCKED) o
WHERE t.id = o.id
RETURNING t.id, t.tenant_id, o.old, t.circuit_state
"""


_RELEASE_SQL = """
UPDATE outbox_target SET circuit_probe_until = NULL
WHERE id = %(id)s AND circuit_state = %(half_open)s
"""


def _log(rows, target_id, reason: str) -> None:
    for tenant_id, old, new in rows:
        if old != new:
            logger.warning("circuit %s: %s -> %s (%s)", target_id, old, new, reason)
            CircuitTransition.objects.create(
                tenant_id=tenant_id,
                target_id=target_id,
                from_state=old,
                to_state=new,
                reason=reason[:255],
            )
            operator_events.circuit_changed(target_id=target_id, old=old, new=new, reason=reason)


def record_failures(*, target_id, count: int, now: datetime, reason: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            _FAILURE_SQL,
            {
                **_STATES,
                "id": target_id,
                "n": count,
                "now": now,
                "threshold": conf.get("OUTBOX_CIRCUIT_FAILURES"),
            },
        )
        _log(cursor.fetchall(), target_id, reason)


def record_successes(*, target_id, count: int) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            _SUCCESS_SQL,
            {
                **_STATES,
                "id": target_id,
                "n": count,
                "close": conf.get("OUTBOX_CIRCUIT_CLOSE_SUCCESSES"),
            },
        )
        _log(cursor.fetchall(), target_id, f"{count} successful deliveries")


def probes_take(*, now: datetime, lease_seconds: float) -> list[str]:
    """Targets whose single half-open probe this worker now owns."""
    with connection.cursor() as cursor:
        cursor.execute(
            _PROBE_SQL,
            {
                **_STATES,
                "now": now,
                "lease_until": now + timedelta(seconds=lease_seconds),
                "reopen_before": now - timedelta(seconds=conf.get("OUTBOX_CIRCUIT_OPEN_SECONDS")),
            },
        )
        rows = cursor.fetchall()
    taken = []
    for target_id, tenant_id, old, new in rows:
        _log([(tenant_id, old, new)], target_id, "open period over: one probe")
        taken.append(str(target_id))
    return taken


def probe_release(*, target_id) -> None:
    """No due delivery to probe with: let the next worker (or the next event) take it."""
    with connection.cursor() as cursor:
        cursor.execute(_RELEASE_SQL, {**_STATES, "id": target_id})


# --- what a round's verdicts mean for their targets --------------------------------------------


def needs_write(results: list[Result]) -> bool:
    """Only failures, 410s and successes of a target not clean need a target row write."""
    return any(
        r.gone or r.outcome == "retry" or (r.outcome == "delivered" and not r.job.circuit_clean)
        for r in results
    )


def verdicts_apply(results: list[Result], now: datetime) -> None:
    """Consecutive runs of successes / failures per target, in completion order."""
    runs: dict[str, list[list]] = defaultdict(list)
    for result in results:
        if not result.sent or result.job.target_kind == Target.Kind.REALTIME:
            continue
        ok = result.outcome == "delivered"
        # a permanent 4xx is the receiver answering: it does not trip the breaker
        if not ok and result.outcome != "retry":
            continue
        series = runs[result.job.target_id]
        if series and series[-1][0] == ok:
            series[-1][1] += 1
        else:
            series.append([ok, 1, result.error[:200]])
    for target_id, series in runs.items():
        for ok, count, error in series:
            if ok:
                record_successes(target_id=target_id, count=count)
            else:
                record_failures(
                    target_id=target_id, count=count, now=now, reason=error or "failure"
                )


def gone_pause(results: list[Result], now: datetime) -> None:
    """A 410 Gone pauses its target: the receiver said the URL will never work again."""
    for result in results:
        if result.gone:
            paused = Target.objects.filter(pk=result.job.target_id, paused_at__isnull=True).update(
                paused_at=now, paused_reason=GONE_REASON, updated_at=now
            )
            if paused:
                operator_events.target_paused(target_id=result.job.target_id, reason=GONE_REASON)
