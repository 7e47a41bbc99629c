"""The outbox's contribution to operations: health, status, /metrics and its dashboard part.

Only open and dead deliveries are read (the partial index outbox_delivery_unsettled,
index-only), plus the per-minute DeliveryStat counters of a bounded window: the delivered
history and the attempts are never scanned.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily

from core.dashboard import age, iso, rate, tenant_filter
from core.figures import Figure
from core.metrics import gauge, window_start
from core.ops import DEGRADED, OK, Check, DashboardSection, Finding
from outbox import conf
from outbox.models import ATTEMPT_BUCKETS, LATENCY_BUCKETS, Delivery, DeliveryStat, Target
from outbox.selectors import (
    lag_seconds,
    minute_floor,
    stats_since,
    target_stats,
    unsettled_counts,
    workers_alive,
)
from outbox.tasks import SCHEDULES
from tenants.scoping import scoped

OPEN = [str(s) for s in Delivery.OPEN_STATUSES]
TARGETS_SHOWN = 20


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
    # Only open and dead rows are read (partial index, index-only), never the delivered
    # history; targets without such rows still get their zeros.
    counts = {row["target_id"]: row for row in unsettled_counts(deliveries=Delivery.objects)}
    for target in Target.objects.select_related("tenant").order_by("tenant__name", "name"):
        values = [target.tenant.name, target.name, target.kind]
        entry = counts.get(target.pk, {"pending": 0, "dead": 0, "oldest": None})
        pending.add_metric(values, entry["pending"])
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
    """What the worker did in the window, from the per-minute DeliveryStat rows (at most
    targets × window minutes rows, whatever the attempt history holds)."""
    minutes = settings.METRICS_WINDOW_MINUTES
    attempts = GaugeMetricFamily(
        "atlas_outbox_attempts_window",
        f"Delivery attempts in the last {minutes} min by outcome",
        labels=["kind", "outcome"],
    )
    by_kind: dict = {}
    for row in (
        DeliveryStat.objects.filter(minute__gte=minute_floor(window_start()))
        .values_list("target__kind", *WINDOW_FIELDS)
        .order_by()
    ):
        kind, values = row[0], row[1:]
        entry = by_kind.get(kind)
        by_kind[kind] = (
            list(values)
            if entry is None
            else [_add(a, b) for a, b in zip(entry, values, strict=True)]
        )
    for kind, (_tried, ok, retry, permanent, *_rest) in sorted(by_kind.items()):
        for outcome, n in (("delivered", ok), ("permanent", permanent), ("retry", retry)):
            if n:
                attempts.add_metric([kind, outcome], n)
    durations = HistogramMetricFamily(
        "atlas_outbox_attempt_duration_seconds_window",
        f"Duration of delivery attempts (HTTP call) in the last {minutes} min",
        labels=["kind"],
    )
    latency = HistogramMetricFamily(
        "atlas_outbox_delivery_latency_seconds_window",
        f"Publish-to-delivered latency of deliveries delivered in the last {minutes} min",
        labels=["kind"],
    )
    for kind, (_t, _o, _r, _p, ms_sum, dur_le, lat_sum, lat_le) in sorted(by_kind.items()):
        if dur_le[-1]:
            durations.add_metric([kind], _buckets(ATTEMPT_BUCKETS, dur_le), ms_sum / 1000.0)
        if lat_le[-1]:
            latency.add_metric([kind], _buckets(LATENCY_BUCKETS, lat_le), lat_sum)
    return [attempts, durations, latency]


WINDOW_FIELDS = (
    "attempts",
    "attempts_delivered",
    "attempts_retry",
    "attempts_permanent",
    "duration_ms_sum",
    "duration_le",
    "latency_seconds_sum",
    "latency_le",
)


def _add(a, b):
    """Sums a counter, or cumulative histogram arrays element by element."""
    return [x + y for x, y in zip(a, b, strict=True)] if isinstance(a, list) else a + b


def _buckets(bounds, cumulative: list) -> list:
    return [(str(float(b)), n) for b, n in zip(bounds, cumulative[:-1], strict=True)] + [
        ("+Inf", cumulative[-1])
    ]


# --- dashboard -------------------------------------------------------------------------------


def dashboard_summary(*, tenant_id=None, now: datetime) -> dict:
    tf = tenant_filter(tenant_id)
    # open and dead rows only (index-only), activity from the per-minute counters: the
    # delivered history is never scanned
    agg = unsettled_counts(deliveries=scoped(Delivery, tenant_id), group_by=())
    stat = stats_since(since=now - timedelta(hours=24), tenant_id=tenant_id, group_by=())
    tries = {"total": stat["attempts"], "ok": stat["attempts_delivered"]}
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
    counts = {
        row["tenant_id"]: row
        for row in unsettled_counts(
            deliveries=Delivery.objects.filter(tenant_id__in=tenant_ids), group_by=("tenant_id",)
        )
    }
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
