"""Recording verdicts: every delivery row, attempt row and realtime broadcast of a group of
finished sends in one statement (one statement = one transaction, all or nothing)."""

from __future__ import annotations

import json
import logging
import random
from datetime import datetime
from typing import Any, NamedTuple

from core.backoff import backoff_seconds
from outbox import conf
from outbox.delivery.claim import CLOSED, fetch_all
from outbox.delivery.send import Job, Result
from outbox.models import ATTEMPT_BUCKETS, LATENCY_BUCKETS, Delivery, DeliveryAttempt, Target

logger = logging.getLogger("outbox.delivery")


class Verdict(NamedTuple):
    """One result as the record statement takes it: the delivery's new state, then its
    attempt row, then the realtime broadcast (if any)."""

    delivery_id: int
    token: str  # the lease token it was claimed under: only that holder may write the row
    status: str
    attempts_add: int
    next_in_seconds: float  # next_attempt_at = the statement's now + this
    delivered: bool
    error: str
    tenant_id: str
    target_id: str
    number: int
    outcome: str
    status_code: int | None
    duration_ms: float
    excerpt: str
    sent: bool  # False: handed back by the rate limit, no attempt row
    broadcast: str | None


# Verdict field -> its SQL type. The statement gets the verdicts as one JSON text (an array
# of objects, matched by name): one parameter whatever the group size, encoded by the json
# module in C instead of a parameter list quoted value by value.
_SQL_TYPES = {
    "delivery_id": "bigint",
    "token": "text",
    "status": "varchar",
    "attempts_add": "int",
    "next_in_seconds": "float8",
    "delivered": "bool",
    "error": "text",
    "tenant_id": "uuid",
    "target_id": "uuid",
    "number": "int",
    "outcome": "varchar",
    "status_code": "int",
    "duration_ms": "float8",
    "excerpt": "text",
    "sent": "bool",
    "broadcast": "text",
}
if tuple(_SQL_TYPES) != Verdict._fields:
    raise ImportError("outbox record: _SQL_TYPES and Verdict disagree")
_V_COLUMNS = ", ".join(f"{name} {kind}" for name, kind in _SQL_TYPES.items())


def _cumulative(column: str, bounds, scale: float) -> str:
    """ARRAY[count(*) FILTER (WHERE column <= bound) …, count(column)]: a cumulative
    histogram with +Inf last (bounds in seconds, `scale` converts to the column's unit)."""
    parts = [f"count(*) FILTER (WHERE {column} <= {b * scale!r})" for b in bounds]
    return "ARRAY[" + ", ".join([*parts, f"count({column})"]) + "]::bigint[]"


def _added(column: str) -> str:
    return (
        f"{column} = ARRAY(SELECT a + b FROM unnest(s.{column}, EXCLUDED.{column})"
        " WITH ORDINALITY AS u(a, b, i) ORDER BY i)"
    )


# The per-minute counters (outbox.models.DeliveryStat) grow in the same statement: attempts
# from every sent verdict (like the attempt rows), settled deliveries only from rows this
# statement changed (a lost lease counts nothing twice). ORDER BY target_id: concurrent
# workers lock the counter rows in one order, so they wait for each other but never deadlock.
_STATS_CTE = f"""
facts AS (
    SELECT v.tenant_id, v.target_id, 1 AS attempts, (v.outcome = 'delivered')::int AS ok,
           (v.outcome = 'retry')::int AS retry, (v.outcome = 'permanent')::int AS permanent,
           v.duration_ms, 0 AS delivered, 0 AS dead, NULL::float8 AS latency
    FROM v WHERE v.sent
    UNION ALL
    SELECT u.tenant_id, u.target_id, 0, 0, 0, 0, NULL, (u.status = 'delivered')::int,
           (u.status = 'dead')::int,
           CASE WHEN u.status = 'delivered'
                THEN extract(epoch FROM %(now)s - u.created_at)::float8 END
    FROM upd u WHERE u.status IN ('delivered', 'dead')
),
stats AS (
    INSERT INTO outbox_deliverystat AS s (created_at, updated_at, tenant_id, target_id, minute,
        attempts, attempts_delivered, attempts_retry, attempts_permanent, delivered, dead,
        duration_ms_sum, duration_le, latency_seconds_sum, latency_le)
    SELECT %(now)s, %(now)s, tenant_id, target_id, date_trunc('minute', %(now)s),
           sum(attempts), sum(ok), sum(retry), sum(permanent), sum(delivered), sum(dead),
           coalesce(sum(duration_ms), 0), {_cumulative("duration_ms", ATTEMPT_BUCKETS, 1000.0)},
           coalesce(sum(latency), 0), {_cumulative("latency", LATENCY_BUCKETS, 1.0)}
    FROM facts GROUP BY tenant_id, target_id ORDER BY target_id
    ON CONFLICT ON CONSTRAINT outbox_stat_target_minute DO UPDATE SET
        updated_at = EXCLUDED.updated_at,
        attempts = s.attempts + EXCLUDED.attempts,
        attempts_delivered = s.attempts_delivered + EXCLUDED.attempts_delivered,
        attempts_retry = s.attempts_retry + EXCLUDED.attempts_retry,
        attempts_permanent = s.attempts_permanent + EXCLUDED.attempts_permanent,
        delivered = s.delivered + EXCLUDED.delivered,
        dead = s.dead + EXCLUDED.dead,
        duration_ms_sum = s.duration_ms_sum + EXCLUDED.duration_ms_sum,
        latency_seconds_sum = s.latency_seconds_sum + EXCLUDED.latency_seconds_sum,
        {_added("duration_le")}, {_added("latency_le")}
)"""

# The delivery rows are fenced by each verdict's lease token, so a worker whose lease expired
# changes nothing; the attempt rows are kept even then (evidence); the broadcast goes only for
# rows this statement marked delivered.
_RECORD_SQL = f"""
WITH v AS (
    SELECT * FROM json_to_recordset(%(verdicts)s::json) AS v({_V_COLUMNS})
),
upd AS (
    UPDATE outbox_delivery d SET status = v.status, attempts = d.attempts + v.attempts_add,
        next_attempt_at = %(now)s + make_interval(secs => v.next_in_seconds),
        delivered_at = CASE WHEN v.delivered THEN %(now)s END, last_error = v.error,
        locked_until = NULL, locked_by = '', updated_at = %(now)s
    FROM v WHERE d.id = ANY (ARRAY(SELECT delivery_id FROM v))  -- by primary key, whatever
      AND d.id = v.delivery_id AND d.locked_by = v.token      -- the planner guesses for `v`
      AND d.status NOT IN {CLOSED}
    RETURNING d.id, d.tenant_id, d.target_id, d.status, d.created_at
),
released AS (  -- cancelled by staff while on the wire: the status stays, the lease goes
    UPDATE outbox_delivery d SET locked_until = NULL, locked_by = ''
    FROM v WHERE d.id = ANY (ARRAY(SELECT delivery_id FROM v))
      AND d.id = v.delivery_id AND d.locked_by = v.token AND d.status IN {CLOSED}
),
ins AS (
    INSERT INTO outbox_deliveryattempt (created_at, updated_at, tenant_id, delivery_id, number,
        outcome, status_code, duration_ms, response_excerpt, error, worker)
    SELECT %(now)s, %(now)s, v.tenant_id, v.delivery_id, v.number, v.outcome, v.status_code,
           v.duration_ms, v.excerpt, v.error, %(worker)s
    FROM v WHERE v.sent
),
{_STATS_CTE}
SELECT upd.id FROM upd
UNION ALL
SELECT -1 FROM (SELECT pg_notify(%(channel)s, v.broadcast) FROM v
                WHERE v.broadcast IS NOT NULL AND v.delivery_id IN (SELECT id FROM upd)) AS b
"""

# Result.outcome -> the attempt row's outcome. Choice values are read once here, as plain
# strings: an enum attribute lookup per delivery is measurable on the worker's hot path.
_ATTEMPT_OUTCOME = {
    "delivered": DeliveryAttempt.Outcome.DELIVERED.value,
    "retry": DeliveryAttempt.Outcome.RETRY.value,
}
_PERMANENT = DeliveryAttempt.Outcome.PERMANENT.value
_PENDING, _RETRYING = Delivery.Status.PENDING.value, Delivery.Status.RETRYING.value
_DELIVERED, _DEAD = Delivery.Status.DELIVERED.value, Delivery.Status.DEAD.value
_REALTIME = Target.Kind.REALTIME.value


def verdicts_record(
    *, results: list[Result], tokens: dict[int, str], worker_id: str, now: datetime
) -> set[int]:
    """Write the verdicts, each fenced by its lease token (`tokens`: delivery id -> token);
    returns the delivery ids whose rows changed (the others' lease had expired and was
    re-claimed: only their attempt rows were written)."""
    verdicts = json.dumps(
        [verdict_for(result, tokens[result.job.delivery_id])._asdict() for result in results],
        separators=(",", ":"),
    )
    params: dict[str, Any] = {
        "verdicts": verdicts,
        "now": now,
        "worker": worker_id[:100],
        "channel": conf.CHANNEL_REALTIME,
    }
    rows = fetch_all(_RECORD_SQL, params)
    return {delivery_id for (delivery_id,) in rows if delivery_id != -1}


def verdict_for(result: Result, token: str) -> Verdict:
    job = result.job
    error = storable(result.error or "")[:1000]
    attempt = job.attempts + 1
    counted, delivered, last_error, broadcast, next_in = 1, False, error, None, 0.0
    if result.outcome == "delivered":
        new_status, delivered, last_error = _DELIVERED, True, ""
        if job.target_kind == _REALTIME:
            broadcast = json.dumps({"tenant": job.tenant_id, "seq": job.seq})
    elif result.outcome == "deferred":  # handed back by the rate limit: not a try
        new_status = _RETRYING if job.attempts else _PENDING
        next_in, counted, last_error = result.retry_after or 1.0, 0, ""
    elif goes_dead(result):
        new_status = _DEAD
    else:
        new_status, next_in = _RETRYING, retry_delay(result)
    return Verdict(
        delivery_id=job.delivery_id,
        token=token,
        status=new_status,
        attempts_add=counted,
        next_in_seconds=next_in,
        delivered=delivered,
        error=last_error,
        tenant_id=job.tenant_id,
        target_id=job.target_id,
        number=attempt,
        outcome=_ATTEMPT_OUTCOME.get(result.outcome, _PERMANENT),
        status_code=result.status_code,
        duration_ms=round(result.duration_ms, 2),
        excerpt=storable(result.excerpt),
        sent=result.sent,
        broadcast=broadcast,
    )


def goes_dead(result: Result) -> bool:
    """A permanent failure, or a failed try that used up the attempt budget."""
    if result.outcome == "permanent":
        return True
    if result.outcome != "retry":
        return False
    return result.job.attempts + 1 >= (result.job.max_attempts or conf.get("OUTBOX_MAX_ATTEMPTS"))


def retry_delay(result: Result) -> float:
    """Seconds until the next try: the receiver's Retry-After, or our backoff (both capped)."""
    job = result.job
    cap = backoff_cap(job)
    if result.retry_after is not None:
        return min(cap, result.retry_after)
    base = job.backoff_base or conf.get("OUTBOX_BACKOFF_BASE_SECONDS")
    return backoff_seconds(attempt=job.attempts + 1, base=base, cap=cap, rng=random)


def backoff_cap(job: Job) -> float:
    """The longest a delivery of this job's target waits between tries."""
    return job.backoff_max or conf.get("OUTBOX_BACKOFF_MAX_SECONDS")


def storable(text: str) -> str:
    """A receiver's bytes may hold NUL, which PostgreSQL text refuses (and one refused row
    would fail the whole round's record, again and again)."""
    return text.replace("\x00", "\ufffd")


def verdict_log(result: Result, *, recorded: bool) -> None:
    """One line per delivery verdict carrying tenant, event, target and delivery ids (as JSON
    fields with LOG_FORMAT=json). Failures at WARNING; successes at DEBUG (hot path)."""
    job = result.job
    level = logging.DEBUG if result.outcome in {"delivered", "deferred"} else logging.WARNING
    if not logger.isEnabledFor(level):
        return
    logger.log(
        level,
        "delivery %s: %s (status %s, %.0f ms)%s%s",
        job.delivery_id,
        result.outcome,
        result.status_code,
        result.duration_ms,
        f": {result.error}" if result.error else "",
        "" if recorded else " [lease lost: not recorded]",
        extra={
            "tenant_id": job.tenant_id,
            "event_id": job.event_id,
            "target": job.target_id,
            "delivery_id": job.delivery_id,
            "outcome": result.outcome,
        },
    )
