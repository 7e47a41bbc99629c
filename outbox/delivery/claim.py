"""Claiming due deliveries: one SKIP LOCKED statement that shares the claim fairly and takes
the lease.

Fair sharing, inside the statement:
- per target: at most `target_cap` live leases, counted over every worker (a dead target
  holds its cap, never the fleet);
- per tenant: its due deliveries take turns (round-robin over its targets), and its turn
  number starts after what it already has in flight on this worker; the lowest turns are
  taken first, so a tenant with one due event goes before the 17th send of a tenant with a
  backlog;
- a tenant holds at most `share` of the worker's slots while another tenant competes (has
  due deliveries now, or was active on this worker moments ago), and at most `solo` when
  alone (a few slots stay free for a newcomer even then).
The statement's cost follows the number of open targets (one index probe each), not the
backlog: it reads at most `min(room, limit)` rows per target.

The worker is a system process: it works across tenants by design, so its claims are SQL over
ids, not tenant-scoped queries.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import NamedTuple

import psycopg
from django.db import connection

from outbox.delivery.send import Job
from outbox.models import Delivery, Target


def fetch_all(sql: str, params: dict) -> list[tuple]:
    """Run one of the delivery loop's statements with server-side binding (parameters sent
    apart from the text, encoded by psycopg's C dumpers), with Django's error translation.
    Django's own cursors quote every parameter into the SQL text in Python, which cost the
    worker more CPU than its HTTP sends' bookkeeping. A raw cursor bypasses the backend's
    cursor wrapper, so the row-level-security scope (the worker's system scope) is declared
    here first, when the connection does not already run with it (tenants/db)."""
    connection.ensure_connection()
    pending = connection.rls_pending()  # type: ignore[attr-defined]
    if pending is not None:
        connection.rls_apply(*pending)  # type: ignore[attr-defined]
    with connection.wrap_database_errors, psycopg.Cursor(connection.connection) as cursor:
        cursor.execute(sql, params, prepare=False)
        return cursor.fetchall()


def sql_list(values) -> str:
    """An SQL list literal of choice values, formatted once at import: a literal (not a
    parameter) so the planner can match the partial indexes' `status IN (...)` predicates."""
    return "(" + ", ".join(f"'{value}'" for value in map(str, values)) + ")"


OPEN = sql_list(Delivery.OPEN_STATUSES)
# The same rows as `status IN OPEN`, phrased so that no partial index qualifies: for a few rows
# looked up by primary key (the planner, guessing, scanned a whole partial index instead).
CLOSED = sql_list(s for s in Delivery.Status.values if s not in Delivery.OPEN_STATUSES)
_SLACK = Target.Kind.SLACK.value
# Rows of a target's due range read past its cap when counting its live leases (rows an
# ordering key holds back may sit between them).
HEAD_SLACK = 32


class ClaimedRow(NamedTuple):
    """One claimed delivery as the claim returns it (the RETURNING list follows this order)."""

    delivery_id: int
    tenant_id: str
    event_id: str
    seq: int
    topic: str
    event_type: str
    payload: str  # jsonb as text: sent as stored, parsed only for kinds that read fields
    idempotency_key: str
    occurred_at: str
    attempts: int
    target_id: str
    target_kind: str
    url: str
    secret: str
    previous_secret: str | None  # only while it still signs
    timeout_seconds: float
    rate_limit_per_second: float | None
    max_attempts: int | None
    backoff_base_seconds: int | None
    backoff_max_seconds: int | None
    circuit_clean: bool
    permanent_statuses: list[int] | None  # None when empty (the usual case)


# ClaimedRow field -> its SQL (d: delivery, e: event, t: target). Built in the field order,
# so a field added to one and not the other fails at import, not at the first claim. Ids come
# as text: they are only ever used as strings.
_RETURNING = {
    "delivery_id": "d.id",
    "tenant_id": "d.tenant_id::text",
    "event_id": "e.id::text",
    "seq": "e.seq",
    "topic": "e.topic",
    "event_type": "e.event_type",
    "payload": "e.payload::text",
    "idempotency_key": "e.idempotency_key",
    # ISO text, parsed by datetime.fromisoformat (C): the ORM's loader cost CPU per row
    "occurred_at": "to_char(e.occurred_at AT TIME ZONE 'UTC',"
    ' \'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"\')',
    "attempts": "d.attempts",
    "target_id": "t.id::text",
    "target_kind": "t.kind",
    "url": "t.url",
    "secret": "t.secret",
    "previous_secret": "CASE WHEN t.previous_secret <> ''"
    " AND t.previous_secret_expires_at > %(now)s THEN t.previous_secret END",
    "timeout_seconds": "t.timeout_seconds",
    "rate_limit_per_second": "t.rate_limit_per_second",
    "max_attempts": "t.max_attempts",
    "backoff_base_seconds": "t.backoff_base_seconds",
    "backoff_max_seconds": "t.backoff_max_seconds",
    # closed with no failures: a success needs no circuit write
    "circuit_clean": f"(t.circuit_state = '{Target.Circuit.CLOSED.value}'"
    " AND t.circuit_failures = 0)",
    "permanent_statuses": "NULLIF(t.permanent_statuses, '{}')",
}
if tuple(_RETURNING) != ClaimedRow._fields:
    raise ImportError("outbox claim: _RETURNING and ClaimedRow disagree")

# A delivery is due when its time has come, nobody holds a live lease, its target is neither
# paused nor tripped nor at its cap of live leases, and (ordering) no earlier open delivery of
# the same target and key exists. Served by outbox_delivery_target_due (each target's due rows
# in order: its head for the live leases, then its next rows); `picked` is a few dozen rows.
# One statement, so it runs in its own transaction: the lease is visible once it returns.
_CLAIM_SQL = f"""
WITH open_targets AS MATERIALIZED (
    SELECT t.id, t.tenant_id, %(target_cap)s - (
        -- live leases: the claim takes each target's due rows in order, so its leased rows
        -- are the head of its due range (behind at most a few rows an ordering key holds
        -- back). Counted there, not through an index on the lease: that index made every
        -- lease and renewal a non-HOT update, writing all of the table's indexes.
        SELECT count(*) FILTER (WHERE head.locked_until > %(now)s) FROM (
            SELECT l.locked_until FROM outbox_delivery l
            WHERE l.target_id = t.id AND l.status IN {OPEN} AND l.next_attempt_at <= %(now)s
            ORDER BY l.next_attempt_at, l.id
            LIMIT %(head)s) AS head
    ) AS room
    FROM outbox_target t
    WHERE t.paused_at IS NULL AND t.circuit_state = %(circuit)s
      AND (%(target)s::uuid IS NULL OR t.id = %(target)s::uuid)
),
candidates AS (
    SELECT c.id, c.next_attempt_at, ot.tenant_id, c.target_turn
    FROM open_targets ot CROSS JOIN LATERAL (
        SELECT d.id, d.next_attempt_at,
               row_number() OVER (ORDER BY d.next_attempt_at, d.id) AS target_turn
        FROM outbox_delivery d
        WHERE d.target_id = ot.id AND d.status IN {OPEN} AND d.next_attempt_at <= %(now)s
          AND (d.locked_until IS NULL OR d.locked_until < %(now)s)
          AND (d.ordering_key IS NULL OR NOT EXISTS (
              SELECT 1 FROM outbox_delivery p
              WHERE p.target_id = d.target_id AND p.ordering_key = d.ordering_key
                AND p.status IN {OPEN} AND p.id < d.id))
        ORDER BY d.next_attempt_at, d.id
        LIMIT %(per_target)s  -- a constant: the planner sees a small plan (no JIT for it)
    ) c
    WHERE ot.room > 0 AND c.target_turn <= ot.room
),
held AS (
    SELECT * FROM unnest(%(held_tenants)s::uuid[], %(held_counts)s::int[]) AS h(tenant_id, n)
),
ranked AS (
    SELECT c.id, c.next_attempt_at,
           COALESCE((SELECT h.n FROM held h WHERE h.tenant_id = c.tenant_id), 0)
           + row_number() OVER (PARTITION BY c.tenant_id
                                ORDER BY c.target_turn, c.next_attempt_at, c.id) AS turn,
           (SELECT count(DISTINCT o.tenant_id) FROM candidates o) > 1
           OR EXISTS (SELECT 1 FROM unnest(%(active)s::uuid[]) a WHERE a <> c.tenant_id)
               AS crowded
    FROM candidates c
),
picked AS (
    SELECT id FROM ranked
    WHERE turn <= CASE WHEN crowded THEN %(share)s ELSE %(solo)s END
    ORDER BY turn, next_attempt_at, id
    LIMIT %(limit)s
),
locked AS (  -- the conditions again: a row leased since this statement's snapshot is skipped;
             -- ids as one array, so the planner looks them up by primary key
    SELECT d.id FROM outbox_delivery d
    WHERE d.id = ANY (ARRAY(SELECT id FROM picked)) AND d.status NOT IN {CLOSED}
      AND d.next_attempt_at <= %(now)s
      AND (d.locked_until IS NULL OR d.locked_until < %(now)s)
    FOR UPDATE OF d SKIP LOCKED
)
UPDATE outbox_delivery d
SET locked_until = %(lease_until)s, locked_by = %(token)s
FROM locked, outbox_outboxevent e, outbox_target t
WHERE d.id = locked.id AND e.id = d.event_id AND t.id = d.target_id
RETURNING {", ".join(_RETURNING.values())}
"""


@dataclass
class Fairness:
    """What the claim needs to share a worker's slots: its slot count, how many jobs it may
    hold claimed ahead of them, and what each tenant holds (claimed, not finished)."""

    slots: int
    held: dict[str, int] = field(default_factory=dict)  # tenant id -> jobs held here
    active: Iterable[str] = ()  # tenants this worker sent for moments ago
    ahead: int = 0  # jobs held beyond the slots (waiting for a sender)

    @property
    def share(self) -> int:
        """At most half of what the worker holds while another tenant competes."""
        return max(1, (self.slots + self.ahead) // 2)

    @property
    def solo(self) -> int:
        """Alone, all but an eighth of the slots (plus the jobs ahead): a newcomer finds a
        free slot even behind a tarpit."""
        return max(1, self.slots - self.slots // 8) + self.ahead


def deliveries_claim(
    *,
    now: datetime,
    token: str,
    lease_seconds: float,
    limit: int,
    circuit_state: str,
    target_cap: int,
    fairness: Fairness,
    target_id: str | None = None,
) -> list[Job]:
    """Lease up to `limit` due deliveries to `token` (of targets in `circuit_state`, or of
    the one target given: a half-open probe), shared fairly (see the module's docstring)."""
    held = {tenant: n for tenant, n in fairness.held.items() if n > 0}
    rows = fetch_all(
        _CLAIM_SQL,
        {
            "now": now,
            "lease_until": now + timedelta(seconds=lease_seconds),
            "token": token,
            "limit": limit,
            "circuit": circuit_state,
            "target": target_id,
            "target_cap": target_cap,
            "per_target": min(target_cap, limit),
            "head": target_cap + HEAD_SLACK,
            "held_tenants": list(held),
            "held_counts": list(held.values()),
            "active": list(fairness.active),
            "share": fairness.share,
            "solo": fairness.solo,
        },
    )
    return [job_from_row(ClaimedRow._make(row)) for row in rows]


def job_from_row(row: ClaimedRow) -> Job:
    signing = [row.secret]
    if row.previous_secret:
        signing.append(row.previous_secret)
    # webhooks send the payload as stored; only Slack reads its fields
    payload = json.loads(row.payload) if row.target_kind == _SLACK else {}
    return Job(
        delivery_id=row.delivery_id,
        tenant_id=row.tenant_id,
        event_id=row.event_id,
        seq=row.seq,
        topic=row.topic,
        event_type=row.event_type,
        payload=payload,
        payload_json=row.payload,
        idempotency_key=row.idempotency_key,
        occurred_at=datetime.fromisoformat(row.occurred_at),
        attempts=row.attempts,
        target_id=row.target_id,
        target_kind=row.target_kind,
        url=row.url,
        secrets=signing,
        timeout=row.timeout_seconds,
        rate_limit=row.rate_limit_per_second,
        max_attempts=row.max_attempts,
        backoff_base=row.backoff_base_seconds,
        backoff_max=row.backoff_max_seconds,
        circuit_clean=row.circuit_clean,
        permanent_statuses=frozenset(row.permanent_statuses or ()),
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
