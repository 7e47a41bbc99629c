"""The finalisation health alert: a tenant whose uploads keep failing to reach storage hears
about it on its Slack target, at most once per hour."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Count, Q
from django.utils import timezone

from core.errors import DomainError
from outbox.services import event_publish
from uploads.models import Attachment, FinaliseAttempt, HealthAlert

# outbox error codes for a tenant whose Slack target cannot take the alert → recorded reason
SKIP_ALERT_REASONS = {
    "unknown_target": "tenant has no slack target",
    "target_disabled": "the tenant's slack target is disabled",
}


def _refusal_code(exc: Exception) -> str | None:
    """The outbox's error code for a refused publish. The outbox raises DomainError once it is
    re-layered; until then its ApiError carries the code as `error_code`."""
    if isinstance(exc, DomainError):
        return exc.code
    return getattr(exc, "error_code", None)


def health_alert_check(*, now: datetime | None = None) -> list[HealthAlert]:
    """For each tenant: if the finalisation failure rate of the last hour is above the
    threshold (with enough attempts), publish uploads.health_degraded to its Slack target —
    at most once per tenant and hour (HealthAlert row + idempotency key per hour)."""
    now = now or timezone.now()
    hour = now.replace(minute=0, second=0, microsecond=0)
    since = now - timedelta(hours=1)
    stats = (
        FinaliseAttempt.objects.filter(created_at__gt=since, created_at__lte=now)
        .values("tenant_id")
        .annotate(attempted=Count("id"), failed=Count("id", filter=Q(succeeded=False)))
    )
    alerts = []
    for row in stats:
        attempted, failed = row["attempted"], row["failed"]
        rate = failed / attempted if attempted else 0.0
        if attempted < settings.UPLOADS_ALERT_MIN_ATTEMPTS:
            continue
        if rate <= settings.UPLOADS_ALERT_FAILURE_RATE:
            continue
        tenant_id = row["tenant_id"]
        if HealthAlert.objects.filter(tenant_id=tenant_id, hour=hour).exists():
            continue
        payload = {
            "window": "1h",
            "hour": hour.isoformat(),
            "attempted": attempted,
            "failed": failed,
            "failureRate": round(rate, 4),
            "threshold": settings.UPLOADS_ALERT_FAILURE_RATE,
            "text": (
                f"Upload finalisation is failing: {failed} of {attempted} attempts "
                f"({rate:.0%}) in the last hour."
            ),
        }
        try:
            alert = _alert_record(tenant_id, hour=hour, attempted=attempted, failed=failed,
                                  rate=rate, payload=payload)  # fmt: skip
        except IntegrityError:  # a concurrent check recorded this hour already
            continue
        alerts.append(alert)
    return alerts


def _alert_record(
    tenant_id, *, hour: datetime, attempted: int, failed: int, rate: float, payload: dict
) -> HealthAlert:
    """The hour's HealthAlert row and the Slack event, together: fired, or skipped with the
    reason when the tenant's Slack target cannot take it."""
    outcome, reason, event_id = HealthAlert.Outcome.FIRED, "", None
    with transaction.atomic():
        alert = HealthAlert.objects.create(
            tenant_id=tenant_id,
            hour=hour,
            outcome=outcome,
            attempted=attempted,
            failed=failed,
            failure_rate=rate,
        )
        try:
            with transaction.atomic():
                event = event_publish(
                    tenant=tenant_id,
                    event_type="uploads.health_degraded",
                    topic="uploads",
                    payload=payload,
                    target="slack",
                    idempotency_key=f"uploads.health_degraded:{hour:%Y-%m-%dT%H}",
                )
            event_id = event.pk
        except Exception as exc:
            code = _refusal_code(exc)
            if code not in SKIP_ALERT_REASONS:
                raise
            outcome = HealthAlert.Outcome.SKIPPED
            reason = SKIP_ALERT_REASONS[code]
        alert.outcome, alert.reason, alert.event_id = outcome, reason, event_id
        alert.save(update_fields=["outcome", "reason", "event_id", "updated_at"])
    return alert


def staged_missing_alert_check(*, now: datetime | None = None) -> list[Attachment]:
    """Pending attachments whose staged bytes were missing for UPLOADS_MISSING_ALERT_ATTEMPTS
    attempts: publish uploads.staged_bytes_missing to the tenant's Slack target, once per
    attachment (missing_alerted_at, and an idempotency key per attachment). They stay pending:
    the host that holds the bytes may come back."""
    now = now or timezone.now()
    due = Attachment.objects.filter(
        status=Attachment.Status.PENDING,
        staged_missing_since__isnull=False,
        missing_alerted_at__isnull=True,
        attempts__gte=settings.UPLOADS_MISSING_ALERT_ATTEMPTS,
    ).order_by("staged_missing_since")[:500]
    alerted = []
    for attachment in due:
        with transaction.atomic():
            claimed = Attachment.objects.filter(
                pk=attachment.pk, missing_alerted_at__isnull=True
            ).update(missing_alerted_at=now, updated_at=now)
            if not claimed:  # a concurrent check took it
                continue
            try:
                with transaction.atomic():
                    event_publish(
                        tenant=attachment.tenant_id,
                        event_type="uploads.staged_bytes_missing",
                        topic="uploads",
                        payload=_missing_payload(attachment),
                        target="slack",
                        idempotency_key=f"uploads.staged_bytes_missing:{attachment.pk}",
                    )
            except Exception as exc:
                if _refusal_code(exc) not in SKIP_ALERT_REASONS:
                    raise
        alerted.append(attachment)
    return alerted


def _missing_payload(attachment: Attachment) -> dict:
    host = attachment.staging_host or "a shared staging folder"
    return {
        "attachmentId": str(attachment.pk),
        "filename": attachment.filename,
        "stagingHost": attachment.staging_host,
        "attempts": attachment.attempts,
        "missingSince": attachment.staged_missing_since.isoformat()
        if attachment.staged_missing_since
        else None,
        "text": (
            f"Upload {attachment.filename!r} ({attachment.pk}) is waiting for its staged bytes "
            f"on {host} after {attachment.attempts} attempts; it stays pending until they "
            "are back."
        ),
    }
