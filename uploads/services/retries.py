"""Retry runs: claim pending attachments (never one twice across runs), finalise each, and
record the run in a RetryLog row — also when it breaks."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from core.errors import DomainError, ErrorKind
from tenants.scoping import tenant_queryset
from uploads.models import Attachment, FinaliseAttempt, HealthAlert, RetryLog, RetrySource
from uploads.services.finalising import attachment_finalise

Status = Attachment.Status


def _claim(*, run_id, source: str, tenant_id=None, ids=None, limit: int) -> list:
    """Claim up to `limit` attachments for this run: one UPDATE over a SKIP LOCKED selection,
    so two runs at the same time never get the same row; the claim (claimed_until) also keeps
    a run that starts just after this one away until we are done or the lease expires."""
    now = timezone.now()
    candidates = Attachment.objects.filter(status=Status.PENDING).filter(
        Q(claimed_until__isnull=True) | Q(claimed_until__lt=now)
    )
    if ids is not None:
        candidates = Attachment.objects.filter(pk__in=ids, status=Status.PENDING).filter(
            Q(claimed_until__isnull=True) | Q(claimed_until__lt=now)
        )
    elif source == RetrySource.SCHEDULED:
        candidates = candidates.filter(next_retry_at__lte=now)
    else:  # client-sync / manual: due or not, but not one attempted a moment ago
        recent = now - timedelta(seconds=settings.UPLOADS_RETRY_MIN_INTERVAL_SECONDS)
        candidates = candidates.filter(
            Q(last_attempt_at__isnull=True) | Q(last_attempt_at__lt=recent)
        )
    if not settings.UPLOADS_STAGING_SHARED:
        # host-local staging: bytes staged on another host are that host's to finalise
        candidates = candidates.filter(staging_host__in=["", settings.ATLAS_HOST_NAME])
    if tenant_id is not None:
        candidates = tenant_queryset(candidates, tenant_id=tenant_id)
    with transaction.atomic():
        chosen = list(
            candidates.order_by("next_retry_at")
            .select_for_update(skip_locked=True)
            .values_list("pk", flat=True)[:limit]
        )
        Attachment.objects.filter(pk__in=chosen).update(
            claimed_by=run_id,
            claimed_until=now + timedelta(seconds=settings.UPLOADS_RETRY_LEASE_SECONDS),
        )
    return chosen


def retry_run(
    *,
    source: str,
    tenant_id=None,
    attachment_ids: Iterable | None = None,
    limit: int | None = None,
    progress: Callable[[int, int, bool | None], None] | None = None,
) -> RetryLog:
    """One retry run: claim, finalise each, write the RetryLog row (also when it breaks)."""
    if source not in {RetrySource.SCHEDULED, RetrySource.CLIENT_SYNC, RetrySource.MANUAL}:
        raise DomainError(
            "invalid_retry_source", f"Unknown retry source {source!r}.", kind=ErrorKind.INVALID
        )
    log = RetryLog.objects.create(source=source, tenant_id=tenant_id, started_at=timezone.now())
    if attachment_ids is not None and source == RetrySource.MANUAL:
        # staff asked for these: failed ones get one more chance
        Attachment.objects.filter(pk__in=list(attachment_ids), status=Status.FAILED).update(
            status=Status.PENDING, next_retry_at=timezone.now(), updated_at=timezone.now()
        )
    attempted = succeeded = failed = 0
    try:
        claimed = _claim(
            run_id=log.pk,
            source=source,
            tenant_id=tenant_id,
            ids=list(attachment_ids) if attachment_ids is not None else None,
            limit=limit or settings.UPLOADS_RETRY_BATCH_SIZE,
        )
        for index, pk in enumerate(claimed, start=1):
            outcome = attachment_finalise(attachment_id=pk, source=source, retry_log=log)
            if outcome is not None:
                attempted += 1
                succeeded += outcome is True
                failed += outcome is False
            if progress:
                progress(index, len(claimed), outcome)
    except Exception as exc:
        log.error = f"{type(exc).__name__}: {exc}"[:2000]
        raise
    finally:
        log.attempted, log.succeeded, log.failed = attempted, succeeded, failed
        log.finished_at = timezone.now()
        log.save(update_fields=["attempted", "succeeded", "failed", "finished_at", "error",
                                "updated_at"])  # fmt: skip
    return log


def retry_logs_prune(*, now: datetime | None = None) -> int:
    """Drop retry logs (and attempt records, health alerts) older than
    UPLOADS_RETRY_LOG_RETENTION_DAYS. Returns the number of retry logs removed."""
    cutoff = (now or timezone.now()) - timedelta(days=settings.UPLOADS_RETRY_LOG_RETENTION_DAYS)
    FinaliseAttempt.objects.filter(created_at__lt=cutoff).delete()
    HealthAlert.objects.filter(hour__lt=cutoff).delete()
    logs, _ = RetryLog.objects.filter(started_at__lt=cutoff).delete()
    return logs
