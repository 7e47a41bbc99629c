"""django-q2 entry points (thin: each calls one service) and the schedules that run them."""

from __future__ import annotations

from core.ops import ScheduleSpec
from uploads.models import RetrySource
from uploads.services import alerts, cleanup, retries, tus


def retry_sweep() -> dict:
    log = retries.retry_run(source=RetrySource.SCHEDULED)
    return {"attempted": log.attempted, "succeeded": log.succeeded, "failed": log.failed}


def prune_retry_logs() -> int:
    return retries.retry_logs_prune()


def health_alert_check() -> int:
    """The hourly failure-rate alert and the alert for attachments whose bytes are missing."""
    return len(alerts.health_alert_check()) + len(alerts.staged_missing_alert_check())


def expired_uploads_cleanup() -> dict:
    """Expired tus uploads first (their rows go, then their bytes), then orphaned files."""
    return {
        "expired": tus.uploads_expired_cleanup(),
        "orphans": cleanup.staging_orphans_cleanup(),
    }


SCHEDULES = [
    ScheduleSpec(
        name="uploads.retry_sweep",
        func="uploads.tasks.retry_sweep",
        minutes=10,
        why="The safety net: pending attachments whose backoff is due get finalised again; "
        "10 minutes bounds how long a file waits after storage comes back.",
    ),
    ScheduleSpec(
        name="uploads.prune_retry_logs",
        func="uploads.tasks.prune_retry_logs",
        minutes=24 * 60,
        why="Retry logs are kept 30 days (UPLOADS_RETRY_LOG_RETENTION_DAYS); daily is enough.",
    ),
    ScheduleSpec(
        name="uploads.health_alert_check",
        func="uploads.tasks.health_alert_check",
        minutes=10,
        why="Looks at the last hour's failure rate; every 10 minutes notices a degradation "
        "quickly, and the alert itself fires at most once per tenant and hour.",
    ),
    ScheduleSpec(
        name="uploads.expired_uploads_cleanup",
        func="uploads.tasks.expired_uploads_cleanup",
        minutes=60,
        why="Unfinished tus uploads expire after UPLOADS_TUS_EXPIRY_HOURS, and staging files "
        "no row needs (*.part of vanished requests, bytes of rolled-back or stored uploads) are "
        "removed after UPLOADS_STAGING_ORPHAN_GRACE_MINUTES; hourly keeps them from piling up.",
    ),
]
