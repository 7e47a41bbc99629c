"""Outbox health: delivery lag and whether a worker is alive (both non-critical: the API
keeps accepting events, which wait safely in PostgreSQL)."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from config.health import Check
from outbox import conf
from outbox.models import WorkerHeartbeat
from outbox.selectors import lag_seconds


def health_checks() -> list[Check]:
    lag = lag_seconds()
    limit = conf.get("OUTBOX_LAG_ALERT_SECONDS")
    stale = timezone.now() - timedelta(seconds=conf.get("OUTBOX_HEARTBEAT_STALE_SECONDS"))
    alive = WorkerHeartbeat.objects.filter(last_seen_at__gte=stale, stopped_at__isnull=True)
    return [
        Check("outbox_lag", lag <= limit, False, {"lagSeconds": round(lag, 1), "limit": limit}),
        Check("outbox_worker", alive.exists(), False, {"workers": alive.count()}),
    ]
