"""Outbox knobs read at call time (tests override them with pytest-django's `settings`)."""

from django.conf import settings

DEFAULTS = {
    "OUTBOX_BACKOFF_BASE_SECONDS": 60,
    "OUTBOX_BACKOFF_MAX_SECONDS": 6 * 3600,
    "OUTBOX_MAX_ATTEMPTS": 8,
    "OUTBOX_LEASE_SECONDS": 60,
    "OUTBOX_BATCH_SIZE": 100,
    "OUTBOX_MAX_PAYLOAD_BYTES": 256 * 1024,
    "OUTBOX_LAG_ALERT_SECONDS": 300,
    "OUTBOX_WORKER_CONCURRENCY": 32,
    "OUTBOX_TARGET_MAX_IN_FLIGHT": 4,
    "OUTBOX_POLL_SECONDS": 2.0,
    "OUTBOX_CIRCUIT_FAILURES": 5,
    "OUTBOX_CIRCUIT_OPEN_SECONDS": 60,
    "OUTBOX_CIRCUIT_CLOSE_SUCCESSES": 3,
    "OUTBOX_SECRET_ROTATION_HOURS": 24,
    "OUTBOX_SLACK_RATE_PER_SECOND": 1.0,
    "OUTBOX_SWEEP_SECONDS": 40,
    "OUTBOX_PRUNE_DAYS": 30,
    "OUTBOX_ATTEMPT_RETENTION_DAYS": 14,
    "OUTBOX_STATS_RETENTION_HOURS": 48,
    "OUTBOX_REALTIME_SETTLE_SECONDS": 30.0,
    "OUTBOX_REALTIME_KEEPALIVE_SECONDS": 15.0,
    "OUTBOX_HEARTBEAT_STALE_SECONDS": 60,
    "OUTBOX_ALLOWED_TARGET_NETWORKS": [],
    "OUTBOX_MAX_TARGETS_PER_TENANT": 20,
    "OUTBOX_EGRESS_PROXY": "",
}

# A target's timeout may not exceed this (refused at create; capped at send for older rows).
MAX_TARGET_TIMEOUT_SECONDS = 15.0

# NOTIFY channels: publish commits wake workers and realtime hubs; realtime targets broadcast.
CHANNEL_EVENTS = "outbox_events"
CHANNEL_REALTIME = "outbox_realtime"


def get(name: str):
    return getattr(settings, name, DEFAULTS[name])
