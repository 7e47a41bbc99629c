"""The uploads app's contribution to operations: status, /metrics and its dashboard part."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import Count, Q, Sum
from prometheus_client.core import GaugeMetricFamily

from core.dashboard import CHART_DAYS, chart_days, day_filters, iso, per_tenant, rate, tenant_filter
from core.figures import Figure
from core.metrics import gauge, window_start
from core.ops import DEGRADED, OK, ChartSpec, DashboardSection, Finding
from tenants.scoping import scoped
from uploads.models import RETRY_RUN_SOURCES, Attachment, FinaliseAttempt, RetryLog
from uploads.selectors import retry_health
from uploads.tasks import SCHEDULES

__all__ = ["SCHEDULES", "SECTIONS"]

RETRY_SOURCES = [s.value for s in RETRY_RUN_SOURCES]
# The states the dashboard counts, each served by a partial index (stored ones are history).
UNSETTLED = ("pending", "failed", "receiving")


def status_findings(*, now: datetime) -> list[Finding]:
    pending = Attachment.objects.filter(status=Attachment.Status.PENDING)
    overdue_before = now - timedelta(minutes=settings.OPS_UPLOADS_OVERDUE_MINUTES)
    overdue = pending.filter(next_retry_at__lt=overdue_before).count()
    failed = Attachment.objects.filter(
        status=Attachment.Status.FAILED, updated_at__gte=now - timedelta(hours=24)
    ).count()
    # staged bytes another host (or an unmounted volume) holds: retried, never failed
    missing = pending.filter(staged_missing_since__isnull=False).count()
    level = DEGRADED if overdue or failed or missing else OK
    return [
        Finding(
            "uploads",
            level,
            f"{pending.count()} pending ({overdue} overdue by "
            f">{settings.OPS_UPLOADS_OVERDUE_MINUTES} min, {missing} waiting for staged bytes), "
            f"{failed} failed in the last 24 h",
        )
    ]


def metric_families() -> list:
    # unsettled states only (partial indexes); stored attachments are history, so they are
    # counted among those created in the window (attachment_created index)
    by_status = GaugeMetricFamily(
        "atlas_uploads_attachments", "Attachments not yet stored, by status", labels=["status"]
    )
    counts = dict(
        Attachment.objects.filter(status__in=UNSETTLED)
        .values_list("status")
        .annotate(n=Count("id"))
        .order_by()
    )
    for status in UNSETTLED:
        by_status.add_metric([status], counts.get(status, 0))

    window = settings.METRICS_WINDOW_MINUTES
    stored = gauge(
        "atlas_uploads_stored_window",
        f"Attachments created in the last {window} min and stored",
        Attachment.objects.filter(
            created_at__gte=window_start(), status=Attachment.Status.STORED
        ).count(),
    )
    retries = GaugeMetricFamily(
        "atlas_uploads_retries_window",
        f"Attachments retried by retry runs in the last {window} min, by source and outcome",
        labels=["source", "outcome"],
    )
    runs = GaugeMetricFamily(
        "atlas_uploads_retry_runs_window",
        f"Retry runs started in the last {window} min by source",
        labels=["source"],
    )
    sums = {
        row["source"]: row
        for row in RetryLog.objects.filter(started_at__gte=window_start())
        .values("source")
        .annotate(runs=Count("id"), ok=Sum("succeeded"), failed=Sum("failed"))
        .order_by()
    }
    for source in RETRY_RUN_SOURCES:
        row: Mapping[str, Any] = sums.get(source.value, {})
        runs.add_metric([source.value], row.get("runs") or 0)
        retries.add_metric([source.value, "succeeded"], row.get("ok") or 0)
        retries.add_metric([source.value, "failed"], row.get("failed") or 0)
    return [by_status, stored, retries, runs]


def dashboard_summary(*, tenant_id=None, now: datetime) -> dict:
    from django.db.models.functions import TruncDate

    tf = tenant_filter(tenant_id)
    # only the unsettled states (partial indexes): stored attachments are history
    counts = dict(
        scoped(Attachment, tenant_id)
        .filter(status__in=UNSETTLED)
        .values_list("status")
        .annotate(n=Count("id"))
        .order_by()
    )
    status_figures = {
        status: Figure(counts.get(status, 0), "uploads.attachment", {"status__exact": status, **tf})
        for status in UNSETTLED
    }
    days = chart_days(now)
    found = {
        (row["day"], row["succeeded"]): row["n"]
        for row in scoped(FinaliseAttempt, tenant_id)
        .filter(source__in=RETRY_SOURCES, created_at__gte=days[0])
        .annotate(day=TruncDate("created_at"))
        .values("day", "succeeded")
        .annotate(n=Count("id"))
        .order_by()
    }
    chart = []
    for start in days:
        base = {"source__in": ",".join(RETRY_SOURCES), **day_filters("created_at", start), **tf}
        ok = found.get((start.date(), True), 0)
        failed = found.get((start.date(), False), 0)
        chart.append(
            {
                "label": start.strftime("%m-%d"),
                "day": start.date().isoformat(),
                "values": {
                    "succeeded": Figure(
                        ok, "uploads.finaliseattempt", {**base, "succeeded__exact": "1"}
                    ),
                    "failed": Figure(
                        failed, "uploads.finaliseattempt", {**base, "succeeded__exact": "0"}
                    ),
                },
                "rate": rate(ok, ok + failed),
            }
        )
    # The per-source run report is the uploads app's own (runs are not per tenant).
    report = None if tenant_id else retry_health(days=CHART_DAYS, now=now)
    if report:
        since = iso(now - timedelta(days=CHART_DAYS))
        for row in report:
            row["runs_figure"] = Figure(
                row["runs"],
                "uploads.retrylog",
                {"source__exact": row["source"], "started_at__gt": since},
            )
    return {**status_figures, "chart": chart, "report": report}


def tenant_overview(*, tenant_ids: list, now: datetime) -> dict:
    counts = per_tenant(
        Attachment.objects.filter(status__in=["pending", "failed"]),
        tenant_ids,
        pending=Q(status="pending"),
        failed=Q(status="failed"),
    )
    overview = {}
    for tenant_id in tenant_ids:
        tf, row = tenant_filter(tenant_id), counts.get(tenant_id, {})
        overview[tenant_id] = {
            "uploads_pending": Figure(
                row.get("pending", 0), "uploads.attachment", {"status__exact": "pending", **tf}
            ),
            "uploads_failed": Figure(
                row.get("failed", 0), "uploads.attachment", {"status__exact": "failed", **tf}
            ),
        }
    return overview


SECTIONS = [
    DashboardSection(
        "uploads",
        "uploads.attachment",
        dashboard_summary,
        ChartSpec(
            element_id="chart-uploads",
            title="Upload retry attempts per day",
            series=(("succeeded", "stored", "#2e7d32"), ("failed", "failed", "#c62828")),
            rate_label="success rate",
        ),
    )
]
