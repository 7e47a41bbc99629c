"""The assessments app's contribution to operations: health, /metrics and its dashboard part."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db.models import Count, Q
from django.db.models.functions import TruncDate
from django.utils import timezone
from prometheus_client.core import CounterMetricFamily

from assessments import metrics
from assessments.models import AssessmentSession
from assessments.tasks import SCHEDULES
from core.dashboard import (
    CHART_DAYS,
    chart_days,
    day_filters,
    day_start,
    iso,
    per_tenant,
    rate,
    tenant_filter,
)
from core.figures import Figure
from core.ops import ChartSpec, Check, DashboardSection
from tenants.scoping import scoped

__all__ = ["SCHEDULES", "SECTIONS"]

RECENT = timedelta(minutes=15)
MODEL = "assessments.assessmentsession"


def health_checks() -> list[Check]:
    """Best-effort event storage leaves no rows when it fails, so report the counter. Not
    critical (the API keeps answering 200); not ok while a failure is recent (15 min)."""
    failures = metrics.events_store_failures()
    last = failures["last"] or {}
    last_at = datetime.fromisoformat(last["at"]) if last.get("at") else None
    recent = last_at is not None and timezone.now() - last_at < RECENT
    return [
        Check(
            "assessment_events_storage",
            not recent,
            False,
            {
                "failedBatches": failures["failures"],
                "lostEvents": failures["lost_events"],
                "lastFailureAt": last.get("at"),
            },
        )
    ]


def metric_families() -> list:
    """The app's own counters (shared cache): analytics batches it could not store."""
    failures = metrics.events_store_failures()
    batches = CounterMetricFamily(
        "atlas_assessments_event_store_failures",
        "Analytics event batches that could not be stored (best effort)",
    )
    batches.add_metric([], failures["failures"] or 0)
    lost = CounterMetricFamily(
        "atlas_assessments_events_lost", "Analytics events lost in those batches"
    )
    lost.add_metric([], failures["lost_events"] or 0)
    return [batches, lost]


def dashboard_summary(*, tenant_id=None, now: datetime) -> dict:
    """Sessions started per day (by creation day) and what became of them."""
    tf = tenant_filter(tenant_id)
    days = chart_days(now)
    found = {
        (row["day"], row["status"]): row["n"]
        for row in scoped(AssessmentSession, tenant_id)
        .filter(created_at__gte=days[0])
        .annotate(day=TruncDate("created_at"))
        .values("day", "status")
        .annotate(n=Count("id"))
        .order_by()
    }
    chart, totals = [], {"started": 0, "completed": 0, "abandoned": 0}
    for start in days:
        base = {**day_filters("created_at", start), **tf}
        day_counts = {s: found.get((start.date(), s), 0) for s in AssessmentSession.Status.values}
        started = sum(day_counts.values())
        completed, abandoned = day_counts["completed"], day_counts["abandoned"]
        totals["started"] += started
        totals["completed"] += completed
        totals["abandoned"] += abandoned
        chart.append(
            {
                "label": start.strftime("%m-%d"),
                "day": start.date().isoformat(),
                "values": {
                    "completed": Figure(completed, MODEL, {**base, "status__exact": "completed"}),
                    "abandoned": Figure(abandoned, MODEL, {**base, "status__exact": "abandoned"}),
                    "open": Figure(
                        started - completed - abandoned,
                        MODEL,
                        {**base, "status__in": "started,in_progress"},
                    ),
                },
                "started": Figure(started, MODEL, base),
                "rate": rate(completed, started),
            }
        )
    window = {"created_at__gte": iso(days[0]), **tf}
    return {
        "started": Figure(totals["started"], MODEL, window),
        "completed": Figure(totals["completed"], MODEL, {**window, "status__exact": "completed"}),
        "abandoned": Figure(totals["abandoned"], MODEL, {**window, "status__exact": "abandoned"}),
        "completion_rate": rate(totals["completed"], totals["started"]),
        "chart": chart,
    }


def tenant_overview(*, tenant_ids: list, now: datetime) -> dict:
    since = day_start(now) - timedelta(days=CHART_DAYS - 1)
    counts = per_tenant(
        AssessmentSession.objects.all(),
        tenant_ids,
        started=Q(created_at__gte=since),
        completed=Q(created_at__gte=since, status="completed"),
    )
    overview = {}
    for tenant_id in tenant_ids:
        row = counts.get(tenant_id, {})
        started = row.get("started", 0)
        overview[tenant_id] = {
            "sessions_started": Figure(
                started, MODEL, {"created_at__gte": iso(since), **tenant_filter(tenant_id)}
            ),
            "completion_rate": rate(row.get("completed", 0), started),
        }
    return overview


SECTIONS = [
    DashboardSection(
        "assessments",
        MODEL,
        dashboard_summary,
        ChartSpec(
            element_id="chart-assessments",
            title="Assessment sessions started per day",
            series=(
                ("completed", "completed", "#2e7d32"),
                ("abandoned", "abandoned", "#c62828"),
                ("open", "still open", "#9e9e9e"),
            ),
            rate_label="completion rate",
        ),
    )
]
