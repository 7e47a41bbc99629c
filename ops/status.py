"""The operator's one-screen status (atlas_status, and the dashboard's banner).

Levels, worst wins:
- down (exit 2): the database is unreachable, or no process delivers anything (no live
  outbox worker AND no django-q2 cluster, whose sweep also delivers every minute);
- degraded (exit 1): one of those two is missing, lag over OUTBOX_LAG_ALERT_SECONDS, dead
  deliveries in the last 24 h, a failing target (circuit open/half-open, paused), the Stripe
  circuit open, overdue or recently failed uploads, stale pending payments;
- ok (exit 0).
/health is narrower on purpose: it answers for the web process (see ops/health.py).
Each app adds its own findings through its ops module's `status_findings(now=...)`.
"""

from __future__ import annotations

import time
from datetime import datetime

from django.utils import timezone

from core.ops import DEGRADED, DOWN, OK, Finding, atlas_app_configs
from ops.health import cluster_check, database_check
from outbox.selectors import workers_alive

EXIT_CODES = {OK: 0, DEGRADED: 1, DOWN: 2}
_RANK = {OK: 0, DEGRADED: 1, DOWN: 2}
# django-q2 keeps each cluster's stat in the cache with a 3 s TTL, refreshed every guard cycle;
# on a loaded host we measured gaps of ~3 s, so "no cluster" is only believed after this long.
CLUSTER_WAIT_SECONDS = 5.0


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
    for config in atlas_app_configs():
        findings.extend(config.status_findings(now=now))
    return findings


def _cluster(wait: float):
    deadline = time.monotonic() + wait
    while True:
        check = cluster_check()
        if check.ok or time.monotonic() >= deadline:
            return check
        time.sleep(0.25)


def _processes(now, cluster_wait: float) -> Finding:
    workers = list(workers_alive(now=now))
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
