"""A backlog in one statement: N due events of a tenant (INSERT … SELECT generate_series), for
the fairness tests and the bench."""

from __future__ import annotations

from django.db import connection

# Event g goes to every target (spread = false) or to target g mod k only (spread = true).
_BACKLOG_SQL = """
WITH ev AS (
    INSERT INTO outbox_outboxevent (id, tenant_id, topic, event_type, payload, idempotency_key,
                                    occurred_at, created_at, updated_at)
    SELECT gen_random_uuid(), %(tenant)s, 'bulk', 'bulk.event', jsonb_build_object('n', g),
           %(prefix)s || g, now(), now(), now()
    FROM generate_series(1, %(n)s) AS g
    RETURNING id, (substring(idempotency_key FROM '[0-9]+$'))::int AS g
)
INSERT INTO outbox_delivery (tenant_id, event_id, target_id, status, attempts, next_attempt_at,
                             locked_by, last_error, created_at, updated_at)
SELECT %(tenant)s, ev.id, t.id, 'pending', 0, now(), '', '', now(), now()
FROM ev CROSS JOIN unnest(%(targets)s::uuid[]) WITH ORDINALITY AS t(id, k)
WHERE NOT %(spread)s OR ev.g %% cardinality(%(targets)s::uuid[]) = t.k - 1
"""


def backlog_insert(*, tenant, targets, n: int, spread: bool = False, prefix: str = "") -> int:
    """`n` events of `tenant`, due now, each to every one of `targets` (or, spread, each to
    one of them in turn). Returns the deliveries written."""
    with connection.cursor() as cursor:
        cursor.execute(
            _BACKLOG_SQL,
            {
                "tenant": str(tenant.pk),
                "targets": [str(t.pk) for t in targets],
                "n": n,
                "spread": spread,
                "prefix": prefix or f"backlog-{tenant.pk}-",
            },
        )
        return cursor.rowcount
