"""Keeping the outbox's history bounded (outbox_prune and its daily schedule).

- events whose every delivery was delivered, older than OUTBOX_PRUNE_DAYS, go with their
  deliveries and attempts; an event with an open, dead or cancelled delivery stays whole;
- attempts of delivered deliveries older than OUTBOX_ATTEMPT_RETENTION_DAYS go earlier (they
  are most of the rows, and nobody reads a success's tries after a while);
- the per-minute counters (DeliveryStat) older than OUTBOX_STATS_RETENTION_HOURS go.

All in bounded batches along seq / the primary key (core.retention.keyset_prune): each batch
is a short transaction, so delivery continues while a prune runs.
"""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from core.retention import expired_rows_sql, keyset_prune
from outbox import conf

# One batch of events in seq order: the expired ones with no unsettled delivery go with their
# deliveries and attempts, in one statement (the FK checks run at commit, after all three).
_EVENTS_SQL = """
WITH batch AS (
    SELECT id, seq, created_at FROM outbox_outboxevent
    WHERE seq > %(after)s ORDER BY seq LIMIT %(limit)s
), doomed AS (
    SELECT b.id FROM batch b
    WHERE b.created_at < %(cutoff)s
      AND NOT EXISTS (SELECT 1 FROM outbox_delivery d
                      WHERE d.event_id = b.id AND d.status <> 'delivered')
), gone_attempts AS (
    DELETE FROM outbox_deliveryattempt a USING outbox_delivery d
    WHERE d.event_id IN (SELECT id FROM doomed) AND a.delivery_id = d.id
), gone_deliveries AS (
    DELETE FROM outbox_delivery d WHERE d.event_id IN (SELECT id FROM doomed)
), gone AS (
    DELETE FROM outbox_outboxevent e WHERE e.id IN (SELECT id FROM doomed) RETURNING 1
)
SELECT (SELECT max(seq) FROM batch), (SELECT count(*) FROM gone),
       coalesce((SELECT bool_and(created_at >= %(cutoff)s) FROM batch), false)
"""

# Attempts in id order: only those of delivered deliveries (a dead delivery's tries are the
# evidence staff need).
_ATTEMPTS_SQL = """
WITH batch AS (
    SELECT id, delivery_id, created_at FROM outbox_deliveryattempt
    WHERE id > %(after)s ORDER BY id LIMIT %(limit)s
), gone AS (
    DELETE FROM outbox_deliveryattempt a USING batch b, outbox_delivery d
    WHERE a.id = b.id AND b.created_at < %(cutoff)s
      AND d.id = b.delivery_id AND d.status = 'delivered'
    RETURNING 1
)
SELECT (SELECT max(id) FROM batch), (SELECT count(*) FROM gone),
       coalesce((SELECT bool_and(created_at >= %(cutoff)s) FROM batch), false)
"""

_STATS_SQL = expired_rows_sql("outbox_deliverystat", "minute")


def events_prune(*, older_than_days: int, batch_size: int = 1000, **options) -> int:
    """Delete events whose every delivery was delivered, older than N days, in batches.
    `options`: progress(total), should_stop(), pause_seconds (core.retention)."""
    cutoff = timezone.now() - timedelta(days=older_than_days)
    return keyset_prune(_EVENTS_SQL, {"cutoff": cutoff}, batch_size=batch_size, **options)


def attempts_prune(*, older_than_days: int, batch_size: int = 5000, **options) -> int:
    """Delete the attempts of delivered deliveries older than N days, in batches."""
    cutoff = timezone.now() - timedelta(days=older_than_days)
    return keyset_prune(_ATTEMPTS_SQL, {"cutoff": cutoff}, batch_size=batch_size, **options)


def stats_prune(*, older_than_hours: int | None = None, batch_size: int = 5000) -> int:
    hours = older_than_hours or conf.get("OUTBOX_STATS_RETENTION_HOURS")
    cutoff = timezone.now() - timedelta(hours=hours)
    return keyset_prune(_STATS_SQL, {"cutoff": cutoff}, batch_size=batch_size)


def outbox_prune_all(**options) -> dict:
    """What the daily schedule runs: every window from the settings."""
    return {
        "events": events_prune(older_than_days=conf.get("OUTBOX_PRUNE_DAYS"), **options),
        "attempts": attempts_prune(
            older_than_days=conf.get("OUTBOX_ATTEMPT_RETENTION_DAYS"), **options
        ),
        "stats": stats_prune(),
    }
