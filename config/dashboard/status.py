"""The operator's one-screen status (atlas_status, and the dashboard's banner).

Levels, worst wins:
- down (exit 2): the database is unreachable, or no process delivers anything (no live
  outbox worker AND no django-q2 cluster, whose sweep also delivers every minute);
- degraded (exit 1): one of those two is missing, lag over OUTBOX_LAG_ALERT_SECONDS, dead
  deliveries in the last 24 h, a failing target (circuit open/half-open, paused), the Stripe
  circuit open, overdue or recently failed uploads, stale pending payments;
- ok (exit 0).
/health is narrower on purpose: it answers for the web process (see config/health.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from config.health import cluster_check, database_check

OK, DEGRADED, DOWN = "ok", "degraded", "down"
EXIT_CODES = {OK: 0, DEGRADED: 1, DOWN: 2}
_RANK = {OK: 0, DEGRADED: 1, DOWN: 2}
# django-q2 keeps each cluster's stat in the cache with a 3 s TTL, refreshed every guard cycle;
# on a loaded host we measured gaps of ~3 s, so "no cluster" is only believed after this long.
CLUSTER_WAIT_SECONDS = 5.0


@dataclass
class Finding:
    name: str
    level: str
    summary: str
    lines: list[str] = field(default_factory=list)


def overall(findings: list[Finding]) -> str:
    return max((f.level for f in findings), key=_RANK.__getitem__, default=OK)


def status_report(
    *, now: datetime | None = None, cluster_wait: float = CLUSTER_WAIT_SECONDS
) -> list[Finding]:
    now = now or timezone.now()
    database = database_check()
    if not database.ok:
        return [Finding("database", DOWN, f"unreachable: {database.detail.get('error')}")]
    findings = [Finding("database", OK, f"reachable ({database.detail['latencyMs']} ms)")]
    findings.append(_processes(now, cluster_wait))
    findings.extend(_outbox(now))
    findings.append(_uploads(now))
    findings.append(_payments(now))
    return findings


def _cluster(wait: float):
    deadline = time.monotonic() + wait
    while True:
        check = cluster_check()
        if check.ok or time.monotonic() >= deadline:
            return check
        time.sleep(0.25)


def _processes(now, cluster_wait: float) -> Finding:
    from outbox import conf
    from outbox.models import WorkerHeartbeat

    stale = now - timedelta(seconds=conf.get("OUTBOX_HEARTBEAT_STALE_SECONDS"))
    workers = list(WorkerHeartbeat.objects.filter(last_seen_at__gte=stale, stopped_at__isnull=True))
    cluster = _cluster(cluster_wait)
    clusters = cluster.detail.get("clusters", 0)
    lines = [
        f"outbox worker {w.worker_id}: seen {(now - w.last_seen_at).total_seconds():.0f}s ago, "
        f"{w.delivered} delivered"
        for w in workers
    ]
    lines.append(f"django-q2 clusters running: {clusters}")
    if not workers and not clusters:
        level, summary = DOWN, "no outbox worker and no django-q2 cluster: nothing delivers"
    elif not workers or not clusters:
        missing = "outbox worker" if not workers else "django-q2 cluster (schedules)"
        level, summary = DEGRADED, f"no live {missing}"
    else:
        level, summary = OK, f"{len(workers)} outbox worker(s), {clusters} cluster(s)"
    return Finding("processes", level, summary, lines)


def _outbox(now) -> list[Finding]:
    from outbox import conf
    from outbox.models import Delivery, Target
    from outbox.selectors import lag_seconds

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


def _uploads(now) -> Finding:
    from uploads.models import Attachment

    pending = Attachment.objects.filter(status=Attachment.Status.PENDING)
    overdue_before = now - timedelta(minutes=settings.OPS_UPLOADS_OVERDUE_MINUTES)
    overdue = pending.filter(next_retry_at__lt=overdue_before).count()
    failed = Attachment.objects.filter(
        status=Attachment.Status.FAILED, updated_at__gte=now - timedelta(hours=24)
    ).count()
    level = DEGRADED if overdue or failed else OK
    return Finding(
        "uploads",
        level,
        f"{pending.count()} pending ({overdue} overdue by "
        f">{settings.OPS_UPLOADS_OVERDUE_MINUTES} min), {failed} failed in the last 24 h",
    )


def _payments(now) -> Finding:
    from payments.models import CircuitBreakerState, PaymentSession, PaymentStatus

    pending = PaymentSession.objects.filter(status=PaymentStatus.PENDING)
    stale = pending.filter(
        created_at__lt=now - timedelta(hours=settings.OPS_PAYMENTS_STALE_HOURS)
    ).count()
    circuits = list(
        CircuitBreakerState.objects.filter(opened_until__gt=now).values_list("name", flat=True)
    )
    lines = [f"Stripe circuit {name} open" for name in circuits]
    level = DEGRADED if stale or circuits else OK
    return Finding(
        "payments",
        level,
        f"{pending.count()} pending, {stale} stale (pending for more than "
        f"{settings.OPS_PAYMENTS_STALE_HOURS} h), {len(circuits)} Stripe circuit(s) open",
        lines,
    )
