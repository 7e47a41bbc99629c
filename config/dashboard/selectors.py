"""Dashboard reads: one function per section, scoped to one tenant or to all (tenant_id=None).

Every number is a Figure carrying the admin list filters that show the same rows, so a
support person can click from a number to the rows behind it. Windows are calendar days in
TIME_ZONE (the charts' x axis) or the last 24 h, passed in as `now` so one page is consistent.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Count, Min, Q, QuerySet, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from assessments.models import AssessmentSession
from config.dashboard.figures import Figure
from outbox.models import Delivery, DeliveryAttempt, Target
from outbox.selectors import target_stats
from payments.models import PaymentSession, PaymentStatus
from tenants.models import Tenant
from tenants.scoping import tenant_queryset
from uploads.models import RETRY_RUN_SOURCES, Attachment, FinaliseAttempt
from uploads.selectors import retry_health

OPEN = [str(s) for s in Delivery.OPEN_STATUSES]
PAID = [PaymentStatus.COMPLETED, PaymentStatus.PARTIALLY_REFUNDED, PaymentStatus.REFUNDED]
RETRY_SOURCES = [s.value for s in RETRY_RUN_SOURCES]
CHART_DAYS = 7
TARGETS_SHOWN = 20
TENANTS_SHOWN = 50


def _scope(model_or_queryset, tenant_id):
    # Through the tenant choke point when scoped; the operator's overall view reads all rows.
    if tenant_id:
        return tenant_queryset(model_or_queryset, tenant_id=tenant_id)
    if isinstance(model_or_queryset, QuerySet):
        return model_or_queryset
    return model_or_queryset._default_manager.all()


def _tf(tenant_id) -> dict:
    """The admin's own tenant list_filter (RelatedFieldListFilter on `tenant`)."""
    return {"tenant__id__exact": str(tenant_id)} if tenant_id else {}


def _iso(moment: datetime) -> str:
    return moment.isoformat()


def day_start(moment: datetime) -> datetime:
    local = timezone.localtime(moment)
    return local.replace(hour=0, minute=0, second=0, microsecond=0)


def chart_days(now: datetime, days: int = CHART_DAYS) -> list[datetime]:
    """Start of each of the last `days` calendar days, oldest first (today included)."""
    today = day_start(now)
    return [today - timedelta(days=offset) for offset in range(days - 1, -1, -1)]


def _day_filters(field: str, start: datetime) -> dict:
    return {f"{field}__gte": _iso(start), f"{field}__lt": _iso(start + timedelta(days=1))}


def _rate(part: int, whole: int) -> float | None:
    return round(100.0 * part / whole, 1) if whole else None


# --- outbox ------------------------------------------------------------------------------


def outbox_summary(*, tenant_id=None, now: datetime) -> dict:
    tf = _tf(tenant_id)
    # open and dead rows only: the delivered history is never scanned
    agg = (
        _scope(Delivery, tenant_id)
        .filter(status__in=[*OPEN, "dead"])
        .aggregate(
            pending=Count("id", filter=Q(status__in=OPEN)),
            dead=Count("id", filter=Q(status=Delivery.Status.DEAD)),
            oldest=Min("created_at", filter=Q(status__in=OPEN)),
        )
    )
    since = now - timedelta(hours=24)
    tries = (
        _scope(DeliveryAttempt, tenant_id)
        .filter(created_at__gte=since)
        .aggregate(total=Count("id"), ok=Count("id", filter=Q(outcome="delivered")))
    )
    lag = (now - agg["oldest"]).total_seconds() if agg["oldest"] else 0.0
    pending_filters = {"status__in": ",".join(OPEN), **tf}
    return {
        "pending": Figure(agg["pending"], "outbox.delivery", pending_filters),
        "dead": Figure(agg["dead"], "outbox.delivery", {"status__exact": "dead", **tf}),
        "lag_seconds": Figure(
            round(lag), "outbox.delivery", pending_filters, _age(lag), is_count=False
        ),
        "success_rate_24h": Figure(
            _rate(tries["ok"], tries["total"]),
            "outbox.target",
            tf,
            f"{_rate(tries['ok'], tries['total'])} %" if tries["total"] else "–",
            is_count=False,
        ),
        "attempts_24h": tries["total"],
        "targets": _targets(tenant_id, now),
    }


def _targets(tenant_id, now: datetime) -> list[dict]:
    """Per target (reusing outbox.selectors.target_stats): the troubled ones first."""
    targets = _scope(Target, tenant_id).filter(is_enabled=True)
    ids = {(t.tenant.name, t.name): t for t in targets.select_related("tenant")}
    since = _iso(now - timedelta(hours=24))
    rows = []
    for stat in target_stats(targets=targets):
        target = ids[(stat["tenant"], stat["target"])]
        by_target = {"target__name": target.name, "tenant__id__exact": str(target.tenant_id)}
        change = {"id__exact": str(target.pk)}
        rate = stat["success_rate_24h"]
        rows.append(
            {
                "tenant": stat["tenant"],
                "name": stat["target"],
                "kind": stat["kind"],
                "paused": stat["paused"],
                "trouble": stat["circuit"] != "closed" or stat["paused"],
                "circuit": Figure(stat["circuit"], "outbox.target", change, is_count=False),
                "pending": Figure(
                    stat["pending"], "outbox.delivery", {"status__in": ",".join(OPEN), **by_target}
                ),
                "dead_24h": Figure(
                    stat["dead_24h"],
                    "outbox.delivery",
                    {"status__exact": "dead", "updated_at__gte": since, **by_target},
                ),
                "lag": _age(stat["lag_seconds"]),
                "success_rate_24h": Figure(
                    rate,
                    "outbox.target",
                    change,
                    "–" if rate is None else f"{100 * rate:.1f} %",
                    is_count=False,
                ),
            }
        )
    rows.sort(key=lambda r: (not r["trouble"], -r["pending"].value, r["tenant"], r["name"]))
    return rows[:TARGETS_SHOWN]


def _age(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60}m"


# --- uploads -----------------------------------------------------------------------------


def uploads_summary(*, tenant_id=None, now: datetime) -> dict:
    tf = _tf(tenant_id)
    counts = dict(
        _scope(Attachment, tenant_id).values_list("status").annotate(n=Count("id")).order_by()
    )
    status_figures = {
        status: Figure(counts.get(status, 0), "uploads.attachment", {"status__exact": status, **tf})
        for status in ("pending", "failed", "receiving")
    }
    days = chart_days(now)
    found = {
        (row["day"], row["succeeded"]): row["n"]
        for row in _scope(FinaliseAttempt, tenant_id)
        .filter(source__in=RETRY_SOURCES, created_at__gte=days[0])
        .annotate(day=TruncDate("created_at"))
        .values("day", "succeeded")
        .annotate(n=Count("id"))
        .order_by()
    }
    chart = []
    for start in days:
        base = {"source__in": ",".join(RETRY_SOURCES), **_day_filters("created_at", start), **tf}
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
                "rate": _rate(ok, ok + failed),
            }
        )
    # The per-source run report is the uploads app's own (runs are not per tenant).
    report = None if tenant_id else retry_health(days=CHART_DAYS, now=now)
    if report:
        since = _iso(now - timedelta(days=CHART_DAYS))
        for row in report:
            row["runs_figure"] = Figure(
                row["runs"],
                "uploads.retrylog",
                {"source__exact": row["source"], "started_at__gt": since},
            )
    return {**status_figures, "chart": chart, "report": report}


# --- payments ----------------------------------------------------------------------------


def payments_summary(*, tenant_id=None, now: datetime) -> dict:
    tf = _tf(tenant_id)
    sessions = _scope(PaymentSession, tenant_id)
    counts = dict(sessions.values_list("status").annotate(n=Count("id")).order_by())
    by_status = [
        Figure(
            counts.get(s.value, 0),
            "payments.paymentsession",
            {"status__exact": s.value, **tf},
            label=s.label,
        )
        for s in PaymentStatus
    ]
    revenue = {}
    for key, start in (("today", day_start(now)), ("week", now - timedelta(days=7))):
        filters = {"status__in": ",".join(PAID), "completed_at__gte": _iso(start), **tf}
        rows = (
            sessions.filter(status__in=PAID, completed_at__gte=start)
            .values("currency")
            .annotate(total=Sum("amount"), n=Count("id"))
            .order_by("currency")
        )
        revenue[key] = [
            Figure(
                row["n"],
                "payments.paymentsession",
                {**filters, "currency__exact": row["currency"]},
                f"{(row['total'] or 0) / 100:.2f} {row['currency'].upper()}",
            )
            for row in rows
        ]
    stale_before = now - timedelta(hours=settings.OPS_PAYMENTS_STALE_HOURS)
    stale = Figure(
        sessions.filter(status=PaymentStatus.PENDING, created_at__lt=stale_before).count(),
        "payments.paymentsession",
        {"status__exact": "pending", "created_at__lt": _iso(stale_before), **tf},
    )
    return {"by_status": by_status, "revenue": revenue, "stale_pending": stale}


# --- assessments -------------------------------------------------------------------------


def assessments_summary(*, tenant_id=None, now: datetime) -> dict:
    """Sessions started per day (by creation day) and what became of them."""
    tf = _tf(tenant_id)
    days = chart_days(now)
    found = {
        (row["day"], row["status"]): row["n"]
        for row in _scope(AssessmentSession, tenant_id)
        .filter(created_at__gte=days[0])
        .annotate(day=TruncDate("created_at"))
        .values("day", "status")
        .annotate(n=Count("id"))
        .order_by()
    }
    model = "assessments.assessmentsession"
    chart, totals = [], {"started": 0, "completed": 0, "abandoned": 0}
    for start in days:
        base = {**_day_filters("created_at", start), **tf}
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
                    "completed": Figure(completed, model, {**base, "status__exact": "completed"}),
                    "abandoned": Figure(abandoned, model, {**base, "status__exact": "abandoned"}),
                    "open": Figure(
                        started - completed - abandoned,
                        model,
                        {**base, "status__in": "started,in_progress"},
                    ),
                },
                "started": Figure(started, model, base),
                "rate": _rate(completed, started),
            }
        )
    window = {"created_at__gte": _iso(days[0]), **tf}
    return {
        "started": Figure(totals["started"], model, window),
        "completed": Figure(totals["completed"], model, {**window, "status__exact": "completed"}),
        "abandoned": Figure(totals["abandoned"], model, {**window, "status__exact": "abandoned"}),
        "completion_rate": _rate(totals["completed"], totals["started"]),
        "chart": chart,
    }


# --- per tenant --------------------------------------------------------------------------


def tenants_overview(*, now: datetime) -> list[dict]:
    """One row per tenant (first TENANTS_SHOWN by name): the numbers to compare tenants by."""
    tenants = list(Tenant.objects.order_by("name")[:TENANTS_SHOWN])
    ids = [t.pk for t in tenants]
    since = day_start(now) - timedelta(days=CHART_DAYS - 1)
    outbox = _per_tenant(
        Delivery.objects.filter(status__in=[*OPEN, "dead"]),
        ids,
        pending=Q(status__in=OPEN),
        dead=Q(status=Delivery.Status.DEAD),
    )
    uploads = _per_tenant(Attachment, ids, pending=Q(status="pending"), failed=Q(status="failed"))
    payments = _per_tenant(
        PaymentSession,
        ids,
        pending=Q(status="pending"),
        paid_7d=Q(status__in=PAID, completed_at__gte=now - timedelta(days=7)),
    )
    sessions = _per_tenant(
        AssessmentSession,
        ids,
        started=Q(created_at__gte=since),
        completed=Q(created_at__gte=since, status="completed"),
    )
    rows = []
    for tenant in tenants:
        tf = _tf(tenant.pk)
        o, u, p, s = (d.get(tenant.pk, {}) for d in (outbox, uploads, payments, sessions))
        started = s.get("started", 0)
        rows.append(
            {
                "tenant": tenant,
                "outbox_pending": Figure(
                    o.get("pending", 0), "outbox.delivery", {"status__in": ",".join(OPEN), **tf}
                ),
                "outbox_dead": Figure(
                    o.get("dead", 0), "outbox.delivery", {"status__exact": "dead", **tf}
                ),
                "uploads_pending": Figure(
                    u.get("pending", 0), "uploads.attachment", {"status__exact": "pending", **tf}
                ),
                "uploads_failed": Figure(
                    u.get("failed", 0), "uploads.attachment", {"status__exact": "failed", **tf}
                ),
                "payments_pending": Figure(
                    p.get("pending", 0),
                    "payments.paymentsession",
                    {"status__exact": "pending", **tf},
                ),
                "payments_paid_7d": Figure(
                    p.get("paid_7d", 0),
                    "payments.paymentsession",
                    {
                        "status__in": ",".join(PAID),
                        "completed_at__gte": _iso(now - timedelta(days=7)),
                        **tf,
                    },
                ),
                "sessions_started": Figure(
                    started,
                    "assessments.assessmentsession",
                    {"created_at__gte": _iso(since), **tf},
                ),
                "completion_rate": _rate(s.get("completed", 0), started),
            }
        )
    return rows


def _per_tenant(model_or_queryset, tenant_ids, **conditions) -> dict:
    rows = (
        _scope(model_or_queryset, None)
        .filter(tenant_id__in=tenant_ids)
        .values("tenant_id")
        .annotate(**{name: Count("pk", filter=q) for name, q in conditions.items()})
        .order_by()
    )
    return {row.pop("tenant_id"): row for row in rows}
