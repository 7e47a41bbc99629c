"""The payments app's contribution to operations: status, /metrics and its dashboard part."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Count, Q, Sum
from django.utils import timezone
from prometheus_client.core import GaugeMetricFamily

from core.dashboard import day_start, iso, per_tenant, tenant_filter
from core.figures import Figure
from core.metrics import gauge, window_start
from core.ops import DEGRADED, OK, DashboardSection, Finding
from payments.models import CircuitBreakerState, FailureReason, PaymentSession, PaymentStatus
from payments.tasks import SCHEDULES
from tenants.scoping import scoped

__all__ = ["SCHEDULES", "SECTIONS"]

PAID = [PaymentStatus.COMPLETED, PaymentStatus.PARTIALLY_REFUNDED, PaymentStatus.REFUNDED]
PENDING = PaymentStatus.PENDING
# Settled sessions are history: no figure counts them all. Pending ones are few (the partial
# index pay_sess_pending_created); the others are counted among sessions created in a window
# (pay_sess_created / pay_sess_tenant_created). Stripe Checkout Sessions expire within 24 h of
# their creation, so a session completed after `start` was created after start - 24 h.
CHECKOUT_LIFETIME = timedelta(hours=24)
DASHBOARD_DAYS = 7


def status_findings(*, now: datetime) -> list[Finding]:
    pending = PaymentSession.objects.filter(status=PaymentStatus.PENDING)
    stale = pending.filter(
        created_at__lt=now - timedelta(hours=settings.OPS_PAYMENTS_STALE_HOURS)
    ).count()
    circuits = list(
        CircuitBreakerState.objects.filter(opened_until__gt=now).values_list("name", flat=True)
    )
    # Stripe charged another price/amount/currency than the checkout was made for: a human looks
    day_ago = now - timedelta(hours=24)
    mismatched = PaymentSession.objects.filter(
        failure_reason=FailureReason.AMOUNT_MISMATCH,
        status_changed_at__gte=day_ago,
        created_at__gte=day_ago - CHECKOUT_LIFETIME,  # the index bound, same rows
    ).count()
    lines = [f"Stripe circuit {name} open" for name in circuits]
    if mismatched:
        lines.append(f"{mismatched} payment(s) failed for amount_mismatch in the last 24 h")
    level = DEGRADED if stale or circuits or mismatched else OK
    return [
        Finding(
            "payments",
            level,
            f"{pending.count()} pending, {stale} stale (pending for more than "
            f"{settings.OPS_PAYMENTS_STALE_HOURS} h), {len(circuits)} Stripe circuit(s) open"
            + (f", {mismatched} amount mismatch(es) in 24 h" if mismatched else ""),
            lines,
        )
    ]


def metric_families() -> list:
    family = GaugeMetricFamily(
        "atlas_payments_sessions", "Payment sessions still pending", labels=["status"]
    )
    family.add_metric([PENDING], PaymentSession.objects.filter(status=PENDING).count())
    window = settings.METRICS_WINDOW_MINUTES
    recent = GaugeMetricFamily(
        "atlas_payments_sessions_window",
        f"Payment sessions created in the last {window} min, by status now",
        labels=["status"],
    )
    counts = dict(
        PaymentSession.objects.filter(created_at__gte=window_start())
        .values_list("status")
        .annotate(n=Count("id"))
        .order_by()
    )
    for status in PaymentStatus.values:
        recent.add_metric([status], counts.get(status, 0))
    cutoff = timezone.now() - timedelta(hours=settings.OPS_PAYMENTS_STALE_HOURS)
    stale = gauge(
        "atlas_payments_stale_pending",
        f"Payment sessions pending for more than {settings.OPS_PAYMENTS_STALE_HOURS} h",
        PaymentSession.objects.filter(status="pending", created_at__lt=cutoff).count(),
    )
    return [family, recent, stale]


def dashboard_summary(*, tenant_id=None, now: datetime) -> dict:
    tf = tenant_filter(tenant_id)
    sessions = scoped(PaymentSession, tenant_id)
    since = now - timedelta(days=DASHBOARD_DAYS)
    counts = dict(
        sessions.filter(created_at__gte=since)
        .exclude(status=PENDING)
        .values_list("status")
        .annotate(n=Count("id"))
        .order_by()
    )
    counts[PENDING] = sessions.filter(status=PENDING).count()
    by_status = [
        Figure(
            counts.get(s.value, 0),
            "payments.paymentsession",
            {"status__exact": s.value, **tf}
            if s.value == PENDING
            else {"status__exact": s.value, "created_at__gte": iso(since), **tf},
            label=s.label if s.value == PENDING else f"{s.label} ({DASHBOARD_DAYS} d)",
        )
        for s in PaymentStatus
    ]
    revenue = {}
    for key, start in (("today", day_start(now)), ("week", now - timedelta(days=7))):
        filters = {"status__in": ",".join(PAID), "completed_at__gte": iso(start), **tf}
        rows = (
            sessions.filter(
                status__in=PAID,
                completed_at__gte=start,
                created_at__gte=start - CHECKOUT_LIFETIME,  # the index bound, same rows
            )
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
        {"status__exact": "pending", "created_at__lt": iso(stale_before), **tf},
    )
    return {"by_status": by_status, "revenue": revenue, "stale_pending": stale}


def tenant_overview(*, tenant_ids: list, now: datetime) -> dict:
    week_ago = now - timedelta(days=7)
    recent_or_pending = Q(status=PENDING) | Q(created_at__gte=week_ago - CHECKOUT_LIFETIME)
    counts = per_tenant(
        PaymentSession.objects.filter(recent_or_pending),
        tenant_ids,
        pending=Q(status="pending"),
        paid_7d=Q(status__in=PAID, completed_at__gte=week_ago),
    )
    overview = {}
    for tenant_id in tenant_ids:
        tf, row = tenant_filter(tenant_id), counts.get(tenant_id, {})
        overview[tenant_id] = {
            "payments_pending": Figure(
                row.get("pending", 0), "payments.paymentsession", {"status__exact": "pending", **tf}
            ),
            "payments_paid_7d": Figure(
                row.get("paid_7d", 0),
                "payments.paymentsession",
                {"status__in": ",".join(PAID), "completed_at__gte": iso(week_ago), **tf},
            ),
        }
    return overview


SECTIONS = [DashboardSection("payments", "payments.paymentsession", dashboard_summary)]
