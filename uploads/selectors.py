"""Uploads reads: one attachment, the retry health report (per source, per day), quota use per
tenant."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import Count, Q, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from tenants.scoping import tenant_get_or_404
from uploads.models import RETRY_RUN_SOURCES, Attachment, RetryLog


def attachment_get(*, tenant_id, attachment_id) -> Attachment:
    return tenant_get_or_404(Attachment, tenant_id=tenant_id, pk=attachment_id)


# --- quota use (the rules that use it: uploads.services.quotas) ---------------------------

HELD_STATUSES = [Attachment.Status.PENDING, Attachment.Status.STORED, Attachment.Status.FAILED]


@dataclass(frozen=True)
class TenantUsage:
    stored_bytes: int  # pending, stored and failed attachments
    reserved_bytes: int  # announced by open (unexpired) tus uploads
    open_uploads: int

    @property
    def used_bytes(self) -> int:
        return self.stored_bytes + self.reserved_bytes


def open_uploads_filter(now: datetime) -> Q:
    """A tus upload that is still receiving and has not expired (an expired one answers 410
    and is removed by the hourly clean-up: it no longer reserves anything)."""
    return Q(status=Attachment.Status.RECEIVING) & (
        Q(expires_at__isnull=True) | Q(expires_at__gt=now)
    )


def usage_aggregates(now: datetime) -> dict:
    open_q = open_uploads_filter(now)
    return {
        "stored_bytes": Sum("size", filter=Q(status__in=HELD_STATUSES), default=0),
        "reserved_bytes": Sum("size", filter=open_q, default=0),
        "open_uploads": Count("id", filter=open_q),
    }


# usage_aggregates as one fixed statement: it runs on every upload creation, and building the
# ORM's filtered aggregates cost about 3 ms of Python per call, ten times the query.
_OPEN_SQL = "status = %s AND (expires_at IS NULL OR expires_at > %s)"  # open_uploads_filter
_HELD_SQL = "status IN (" + ", ".join(["%s"] * len(HELD_STATUSES)) + ")"
_USAGE_SQL = (
    f"SELECT COALESCE(SUM(size) FILTER (WHERE {_HELD_SQL}), 0),"
    f" COALESCE(SUM(size) FILTER (WHERE {_OPEN_SQL}), 0), COUNT(*) FILTER (WHERE {_OPEN_SQL})"
    f" FROM {Attachment._meta.db_table} WHERE tenant_id = %s"
)


def usage_statement(*, tenant_id, now: datetime | None = None) -> tuple[str, list[Any]]:
    """The usage statement with its parameters; its row becomes a TenantUsage by usage_of."""
    now = now or timezone.now()
    receiving = Attachment.Status.RECEIVING.value
    params: list[Any] = [*map(str, HELD_STATUSES), receiving, now, receiving, now, str(tenant_id)]
    return _USAGE_SQL, params


def usage_of(row) -> TenantUsage:
    stored, reserved, open_uploads = row
    return TenantUsage(int(stored), int(reserved), int(open_uploads))


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


def tenant_quota_usage(*, now=None) -> list[dict]:
    """Per tenant holding anything: stored bytes (pending, stored, failed), bytes reserved by
    open tus uploads, open uploads, and the limits they count against. Fullest first."""
    rows: Iterable[Mapping[str, Any]] = (
        Attachment.objects.values("tenant_id", "tenant__name")
        .annotate(**usage_aggregates(now or timezone.now()))
        .order_by()
    )
    quota = settings.UPLOADS_TENANT_QUOTA_BYTES
    result = []
    for row in rows:
        stored, reserved, open_uploads = (
            row["stored_bytes"],
            row["reserved_bytes"],
            row["open_uploads"],
        )
        if not (stored or reserved or open_uploads):
            continue
        result.append(
            {
                "tenant_id": str(row["tenant_id"]),
                "tenant": row["tenant__name"],
                "stored_bytes": stored,
                "reserved_bytes": reserved,
                "used_bytes": stored + reserved,
                "open_uploads": open_uploads,
                "quota_bytes": quota,
                "max_open_uploads": settings.UPLOADS_TENANT_MAX_OPEN,
                "used_percent": round(100.0 * (stored + reserved) / quota, 2),
            }
        )
    return sorted(result, key=lambda row: (-row["used_bytes"], row["tenant"]))


def staged_bytes_missing(*, limit: int = 50) -> list[Attachment]:
    """Pending attachments whose staged bytes finalising could not find, longest first: they
    are retried (never failed for good) until the bytes are back."""
    return list(
        Attachment.objects.filter(
            status=Attachment.Status.PENDING, staged_missing_since__isnull=False
        )
        .select_related("tenant")
        .order_by("staged_missing_since")[:limit]
    )
