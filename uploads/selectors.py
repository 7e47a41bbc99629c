"""Uploads reads: one attachment, the retry health report (per source, per day)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from django.db.models import Count, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from tenants.scoping import tenant_get_or_404
from uploads.models import RETRY_RUN_SOURCES, Attachment, RetryLog


def attachment_get(*, tenant_id, attachment_id) -> Attachment:
    return tenant_get_or_404(Attachment, tenant_id=tenant_id, pk=attachment_id)


def _rate(succeeded: int, attempted: int) -> float | None:
    return round(100.0 * succeeded / attempted, 2) if attempted else None


def _totals():
    """What each report sums over a group of retry runs."""
    return {
        "runs": Count("id"),
        "attempted": Sum("attempted"),
        "succeeded": Sum("succeeded"),
        "failed": Sum("failed"),
    }


def _source_numbers(source, row: Mapping[str, Any]) -> dict:
    """One source's numbers from its aggregate row (absent: it did not run, zeros)."""
    attempted = row.get("attempted") or 0
    succeeded = row.get("succeeded") or 0
    return {
        "source": source.value,
        "runs": row.get("runs") or 0,
        "attempted": attempted,
        "succeeded": succeeded,
        "failed": row.get("failed") or 0,
        "success_rate": _rate(succeeded, attempted),
    }


def retry_health(*, days: int = 7, now=None) -> list[dict]:
    """The 7-day retry health report: per source — runs, attempted, succeeded, failed,
    success rate (%). Every source is listed, with zeros when it did not run."""
    since = (now or timezone.now()) - timedelta(days=days)
    rows = {
        row["source"]: row
        for row in RetryLog.objects.filter(started_at__gt=since)
        .values("source")
        .annotate(**_totals())
    }
    return [_source_numbers(source, rows.get(source.value, {})) for source in RETRY_RUN_SOURCES]


def retry_health_daily(*, days: int = 7, now=None) -> list[dict]:
    """Per day (UTC) and source: the same numbers, for the admin chart. Days without runs
    are present with zeros, oldest first."""
    now = now or timezone.now()
    since = now - timedelta(days=days)
    found = {
        (row["day"], row["source"]): row
        for row in RetryLog.objects.filter(started_at__gt=since)
        .annotate(day=TruncDate("started_at"))
        .values("day", "source")
        .annotate(**_totals())
    }
    result = []
    today = now.date()
    for offset in range(days - 1, -1, -1):
        day = today - timedelta(days=offset)
        sources = [_source_numbers(s, found.get((day, s.value), {})) for s in RETRY_RUN_SOURCES]
        entry = {"day": day, "sources": sources}
        entry["attempted"] = sum(s["attempted"] for s in entry["sources"])
        entry["succeeded"] = sum(s["succeeded"] for s in entry["sources"])
        entry["failed"] = sum(s["failed"] for s in entry["sources"])
        result.append(entry)
    return result
