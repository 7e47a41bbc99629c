"""Keeping the analytics events bounded: rows older than ASSESSMENTS_EVENTS_RETENTION_DAYS go,
in batches along the primary key (core.retention.keyset_prune), oldest first."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from core.retention import expired_rows_sql, keyset_prune

_EVENTS_SQL = expired_rows_sql("assessments_analyticsevent", "created_at")


def analytics_events_prune(
    *, older_than_days: int | None = None, batch_size: int = 5000, **options
) -> int:
    """Delete analytics events older than N days (default: the setting), in batches.
    `options`: progress(total), should_stop(), pause_seconds (core.retention)."""
    days = older_than_days or settings.ASSESSMENTS_EVENTS_RETENTION_DAYS
    cutoff = timezone.now() - timedelta(days=days)
    return keyset_prune(_EVENTS_SQL, {"cutoff": cutoff}, batch_size=batch_size, **options)
