"""The outbox's contribution to operations: health, status, /metrics and its dashboard part.

Only open and dead deliveries are read (partial and (target, status) indexes), plus the
attempts of a bounded window: the delivered history is never scanned.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Count, DurationField, ExpressionWrapper, F, Min, Q
from django.utils import timezone
from prometheus_client.core import GaugeMetricFamily

from core.dashboard import age, iso, per_tenant, rate, tenant_filter
from core.figures import Figure
from core.metrics import gauge, histogram, window_start
from core.ops import DEGRADED, OK, Check, DashboardSection, Finding
from outbox import conf
from outbox.models import Delivery, DeliveryAttempt, Target
from outbox.selectors import lag_seconds, target_stats, workers_alive
from outbox.tasks import SCHEDULES
from tenants.scoping import scoped

OPEN = [str(s) for s in Delivery.OPEN_STATUSES]
TARGETS_SHOWN = 20
# Seconds: HTTP call durations are milliseconds to seconds; end-to-end delivery up to hours.
ATTEMPT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
LATENCY_BUCKETS = (0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 6 * 3600, 24 * 3600)


# --- /health and atlas_status ---------------------------------------------------------------


def health_checks() -> list[Check]:
    """Lag and a live worker: both non-critical (the API keeps accepting events, which wait
    safely in PostgreSQL)."""
    lag = lag_seconds()
    limit = conf.get("OUTBOX_LAG_ALERT_SECONDS")
    alive = workers_alive()
    return [
        Check("outbox_lag", lag <= limit, False, {"lagSeconds": round(lag, 1), "limit": limit}),
        Check("outbox_worker", alive.exists(), False, {"workers": alive.count()}),
    ]


def status_findings(*, now: datetime) -> list[Finding]:
    lag, limit = lag_seconds(), conf.get("OUTBOX_LAG_ALERT_SECONDS")
    findings = [
        Finding("outbox lag", DEGRADED if lag > limit else OK, f"{lag:.0f}s (limit {limit}s)")
    ]
    dead = Delivery.objects.filter(status=Delivery.Status.DEAD)
    recent = dead.filter(updated_at__gte=now - timedelta(hours=24)).count()
    findings.append(
        Finding(
            "outbox dead",
            DEGRADED if recent else OK,
            f"{recent} in the last 24 h, {dead.count()} in total",
        )
    )
    failing = list(
        Target.objects.filter(is_enabled=True)
        .exclude(circuit_state=Target.Circuit.CLOSED, paused_at__isnull=True)
        .select_related("tenant")
        .order_by("tenant__name", "name")
    )
    findings.append(
        Finding(
            "failing targets",
            DEGRADED if failing else OK,
            f"{len(failing)} (circuit open or half-open, or paused)",
            [
                f"{t.tenant.name}/{t.name}: circuit {t.circuit_state}"
                + (f", paused ({t.paused_reason})" if t.paused_at else "")
                for t in failing
            ],
        )
    )
    return findings


# --- /metrics --------------------------------------------------------------------------------


def metric_families() -> list:
    now = timezone.now()
    labels = ["tenant", "target", "kind"]
    pending = GaugeMetricFamily(
        "atlas_outbox_pending_deliveries", "Open (pending or retrying) deliveries", labels=labels
    )
    dead = GaugeMetricFamily("atlas_outbox_dead_deliveries", "Dead deliveries", labels=labels)
    oldest = GaugeMetricFamily(
        "atlas_outbox_target_lag_seconds", "Age of the oldest open delivery", labels=labels
    )
    circuit = GaugeMetricFamily(
        "atlas_outbox_circuit_state",
        "Circuit breaker state per target (1 for the current state)",
        labels=[*labels, "state"],
    )
    # Only open and dead rows are read (the (target, status, created_at) index), never the
    # delivered history; targets without such rows still get their zeros.
    counts: dict = {}
    for row in (
        Delivery.objects.filter(status__in=[*Delivery.OPEN_STATUSES, Delivery.Status.DEAD])
        .values("target_id", "status")
        .annotate(n=Count("id"), oldest=Min("created_at"))
        .order_by()
    ):
        entry = counts.setdefault(row["target_id"], {"open": 0, "dead": 0, "oldest": None})
        if row["status"] == Delivery.Status.DEAD:
            entry["dead"] += row["n"]
        else:
            entry["open"] += row["n"]
            if entry["oldest"] is None or row["oldest"] < entry["oldest"]:
                entry["oldest"] = row["oldest"]
    for target in Target.objects.select_related("tenant").order_by("tenant__name", "name"):
        values = [target.tenant.name, target.name, target.kind]
        entry = counts.get(target.pk, {"open": 0, "dead": 0, "oldest": None})
        pending.add_metric(values, entry["open"])
        dead.add_metric(values, entry["dead"])
        oldest.add_metric(
            values, (now - entry["oldest"]).total_seconds() if entry["oldest"] else 0.0
        )
        for state in Target.Circuit.values:
            circuit.add_metric([*values, state], 1 if target.circuit_state == state else 0)

    lag = gauge(
        "atlas_outbox_lag_seconds",
        "Age of the oldest due, undelivered delivery (0 when nothing waits)",
        lag_seconds(),
    )
    workers = gauge(
        "atlas_outbox_workers_alive",
        "Outbox workers with a fresh heartbeat",
        workers_alive(now=now).count(),
    )
    return [pending, dead, oldest, circuit, lag, workers, *_window_families()]


def _window_families() -> list:
    since = window_start()
    minutes = settings.METRICS_WINDOW_MINUTES
    attempts = GaugeMetricFamily(
        "atlas_outbox_attempts_window",
        f"Delivery attempts in the last {minutes} min by outcome",
        labels=["kind", "outcome"],
    )
    recent = DeliveryAttempt.objects.filter(created_at__gte=since)
    for row in (
        recent.values("delivery__target__kind", "outcome")
        .annotate(n=Count("id"))
        .order_by("delivery__target__kind", "outcome")
    ):
        attempts.add_metric([row["delivery__target__kind"], row["outcome"]], row["n"])
    durations = histogram(
        "atlas_outbox_attempt_duration_seconds_window",
        f"Duration of delivery attempts (HTTP call) in the last {minutes} min",
        recent.values("delivery__target__kind"),
        "delivery__target__kind",
        F("duration_ms"),
        ATTEMPT_BUCKETS,
        scale=1000.0,
    )
    delivered = Delivery.objects.filter(status="delivered", delivered_at__gte=since).annotate(
        latency=ExpressionWrapper(F("delivered_at") - F("created_at"), output_field=DurationField())
    )
    latency = histogram(
        "atlas_outbox_delivery_latency_seconds_window",
        f"Publish-to-delivered latency of deliveries delivered in the last {minutes} min",
        delivered.values("target__kind"),
        "target__kind",
        F("latency"),
        LATENCY_BUCKETS,
        as_duration=True,
    )
    return [attempts, durations, latency]


# --- dashboard -------------------------------------------------------------------------------


def dashboard_summary(*, tenant_id=None, now: datetime) -> dict:
    tf = tenant_filter(tenant_id)
    # open and dead rows only: the delivered history is never scanned
    agg = (
        scoped(Delivery, tenant_id)
        .filter(status__in=[*OPEN, "dead"])
        .aggregate(
            pending=Count("id", filter=Q(status__in=OPEN)),
            dead=Count("id", filter=Q(status=Delivery.Status.DEAD)),
            oldest=Min("created_at", filter=Q(status__in=OPEN)),
        )
    )
    since = now - timedelta(hours=24)
    tries = (
        scoped(DeliveryAttempt, tenant_id)
        .filter(created_at__gte=since)
        .aggregate(total=Count("id"), ok=Count("id", filter=Q(outcome="delivered")))
    )
    lag = (now - agg["oldest"]).total_seconds() if agg["oldest"] else 0.0
    pending_filters = {"status__in": ",".join(OPEN), **tf}
    return {
        "pending": Figure(agg["pending"], "outbox.delivery", pending_filters),
        "dead": Figure(agg["dead"], "outbox.delivery", {"status__exact": "dead", **tf}),
        "lag_seconds": Figure(
            round(lag), "outbox.delivery", pending_filters, age(lag), is_count=False
        ),
        "success_rate_24h": Figure(
            rate(tries["ok"], tries["total"]),
            "outbox.target",
            tf,
            f"{rate(tries['ok'], tries['total'])} %" if tries["total"] else "–",
            is_count=False,
        ),
        "attempts_24h": tries["total"],
        "targets": _targets(tenant_id, now),
    }


def _targets(tenant_id, now: datetime) -> list[dict]:
    """Per target (reusing outbox.selectors.target_stats): the troubled ones first."""
    targets = scoped(Target, tenant_id).filter(is_enabled=True)
    ids = {(t.tenant.name, t.name): t for t in targets.select_related("tenant")}
    since = iso(now - timedelta(hours=24))
    rows = []
    for stat in target_stats(targets=targets):
        target = ids[(stat["tenant"], stat["target"])]
        by_target = {"target__name": target.name, "tenant__id__exact": str(target.tenant_id)}
        change = {"id__exact": str(target.pk)}
        success = stat["success_rate_24h"]
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
                "lag": age(stat["lag_seconds"]),
                "success_rate_24h": Figure(
                    success,
                    "outbox.target",
                    change,
                    "–" if success is None else f"{100 * success:.1f} %",
                    is_count=False,
                ),
            }
        )
    rows.sort(key=lambda r: (not r["trouble"], -r["pending"].value, r["tenant"], r["name"]))
    return rows[:TARGETS_SHOWN]


def tenant_overview(*, tenant_ids: list, now: datetime) -> dict:
    counts = per_tenant(
        Delivery.objects.filter(status__in=[*OPEN, "dead"]),
        tenant_ids,
        pending=Q(status__in=OPEN),
        dead=Q(status=Delivery.Status.DEAD),
    )
    overview = {}
    for tenant_id in tenant_ids:
        tf, row = tenant_filter(tenant_id), counts.get(tenant_id, {})
        overview[tenant_id] = {
            "outbox_pending": Figure(
                row.get("pending", 0), "outbox.delivery", {"status__in": ",".join(OPEN), **tf}
            ),
            "outbox_dead": Figure(
                row.get("dead", 0), "outbox.delivery", {"status__exact": "dead", **tf}
            ),
        }
    return overview


__all__ = ["SCHEDULES", "SECTIONS"]

SECTIONS = [DashboardSection("outbox", "outbox.delivery", dashboard_summary)]
