"""Claiming due deliveries: one SKIP LOCKED statement that also takes the lease.

The worker is a system process: it works across tenants by design, so its claims are SQL over
ids, not tenant-scoped queries.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta
from typing import NamedTuple

from django.db import connection

from outbox.delivery.send import Job
from outbox.models import Delivery, Target


def sql_list(values) -> str:
    """An SQL list literal of choice values, formatted once at import: a literal (not a
    parameter) so the planner can match the partial indexes' `status IN (...)` predicates."""
    return "(" + ", ".join(f"'{value}'" for value in map(str, values)) + ")"


OPEN = sql_list(Delivery.OPEN_STATUSES)


class ClaimedRow(NamedTuple):
    """One claimed delivery as the claim returns it (the RETURNING list follows this order)."""

    delivery_id: int
    tenant_id: uuid.UUID
    event_id: uuid.UUID
    seq: int
    topic: str
    event_type: str
    payload: str  # jsonb as text: parsed once, in `job_from_row`
    idempotency_key: str
    occurred_at: datetime
    attempts: int
    target_id: uuid.UUID
    target_kind: str
    url: str
    secret: str
    previous_secret: str
    previous_secret_expires_at: datetime | None
    timeout_seconds: float
    rate_limit_per_second: float | None
    max_attempts: int | None
    backoff_base_seconds: int | None
    backoff_max_seconds: int | None
    circuit_clean: bool


# ClaimedRow field -> its SQL (d: delivery, e: event, t: target). Built in the field order,
# so a field added to one and not the other fails at import, not at the first claim.
_RETURNING = {
    "delivery_id": "d.id",
    "tenant_id": "d.tenant_id",
    "event_id": "e.id",
    "seq": "e.seq",
    "topic": "e.topic",
    "event_type": "e.event_type",
    "payload": "e.payload::text",
    "idempotency_key": "e.idempotency_key",
    "occurred_at": "e.occurred_at",
    "attempts": "d.attempts",
    "target_id": "t.id",
    "target_kind": "t.kind",
    "url": "t.url",
    "secret": "t.secret",
    "previous_secret": "t.previous_secret",
    "previous_secret_expires_at": "t.previous_secret_expires_at",
    "timeout_seconds": "t.timeout_seconds",
    "rate_limit_per_second": "t.rate_limit_per_second",
    "max_attempts": "t.max_attempts",
    "backoff_base_seconds": "t.backoff_base_seconds",
    "backoff_max_seconds": "t.backoff_max_seconds",
    # closed with no failures: a success needs no circuit write
    "circuit_clean": f"(t.circuit_state = '{Target.Circuit.CLOSED.value}'"
    " AND t.circuit_failures = 0)",
}
if tuple(_RETURNING) != ClaimedRow._fields:
    raise ImportError("outbox claim: _RETURNING and ClaimedRow disagree")

# A delivery is due when its time has come, nobody holds a live lease, its target is neither
# paused nor tripped, and (ordering) no earlier open delivery of the same target and key exists.
# One statement, so it runs in its own transaction: the lease is visible once it returns.
_CLAIM_SQL = f"""
WITH due AS (
    SELECT d.id FROM outbox_delivery d
    JOIN outbox_target t ON t.id = d.target_id
    WHERE d.status IN {OPEN} AND d.next_attempt_at <= %(now)s
      AND (d.locked_until IS NULL OR d.locked_until < %(now)s)
      AND t.paused_at IS NULL AND t.circuit_state = %(circuit)s
      AND (%(target)s::uuid IS NULL OR d.target_id = %(target)s::uuid)
      AND (d.ordering_key IS NULL OR NOT EXISTS (
          SELECT 1 FROM outbox_delivery p
          WHERE p.target_id = d.target_id AND p.ordering_key = d.ordering_key
            AND p.status IN {OPEN} AND p.id < d.id))
    ORDER BY d.next_attempt_at, d.id
    LIMIT %(limit)s
    FOR UPDATE OF d SKIP LOCKED
)
UPDATE outbox_delivery d
SET locked_until = %(lease_until)s, locked_by = %(token)s
FROM due, outbox_outboxevent e, outbox_target t
WHERE d.id = due.id AND e.id = d.event_id AND t.id = d.target_id
RETURNING {", ".join(_RETURNING.values())}
"""


def deliveries_claim(
    *,
    now: datetime,
    token: str,
    lease_seconds: float,
    limit: int,
    circuit_state: str,
    target_id: str | None = None,
) -> list[Job]:
    """Lease up to `limit` due deliveries to `token` (of targets in `circuit_state`, or of
    the one target given: a half-open probe)."""
    with connection.cursor() as cursor:
        cursor.execute(
            _CLAIM_SQL,
            {
                "now": now,
                "lease_until": now + timedelta(seconds=lease_seconds),
                "token": token,
                "limit": limit,
                "circuit": circuit_state,
                "target": target_id,
            },
        )
        rows = cursor.fetchall()
    return [job_from_row(ClaimedRow._make(row), now) for row in rows]


def job_from_row(row: ClaimedRow, now: datetime) -> Job:
    signing = [row.secret]
    previous_expires = row.previous_secret_expires_at
    if row.previous_secret and previous_expires and previous_expires > now:
        signing.append(row.previous_secret)
    return Job(
        delivery_id=row.delivery_id,
        tenant_id=str(row.tenant_id),
        event_id=str(row.event_id),
        seq=row.seq,
        topic=row.topic,
        event_type=row.event_type,
        payload=json.loads(row.payload),
        idempotency_key=row.idempotency_key,
        occurred_at=row.occurred_at,
        attempts=row.attempts,
        target_id=str(row.target_id),
        target_kind=row.target_kind,
        url=row.url,
        secrets=signing,
        timeout=row.timeout_seconds,
        rate_limit=row.rate_limit_per_second,
        max_attempts=row.max_attempts,
        backoff_base=row.backoff_base_seconds,
        backoff_max=row.backoff_max_seconds,
        circuit_clean=row.circuit_clean,
    )


def leases_renew(*, ids: list[int], tokens: list[str], lease_seconds: float, now: datetime) -> int:
    """Push out locked_until for these deliveries, where one of these tokens still holds them."""
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE outbox_delivery SET locked_until = %s"
            " WHERE id = ANY(%s) AND locked_by = ANY(%s)",
            [now + timedelta(seconds=lease_seconds), ids, tokens],
        )
        return cursor.rowcount
