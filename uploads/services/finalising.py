"""Finalising: staged bytes into STORAGES["attachments"], verified, in one transaction with the
status change and the upload.stored event; a failure reschedules with backoff."""

from __future__ import annotations

import hashlib
import logging
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.core.exceptions import SuspiciousFileOperation
from django.core.files import File
from django.core.files.storage import Storage, storages
from django.db import transaction
from django.db.models import F
from django.utils import timezone
from django.utils.text import get_valid_filename

from core import backoff
from outbox.services import event_publish
from uploads import staging
from uploads.models import Attachment, FinaliseAttempt, RetryLog

logger = logging.getLogger(__name__)
Status = Attachment.Status


class StagedBytesMissing(Exception):
    """No staged bytes here. Never a permanent failure: they may sit on a host that is down
    or on a shared volume that is unmounted for a moment. Retried with backoff, flagged on the
    row (staged_missing_since) and alerted after UPLOADS_MISSING_ALERT_ATTEMPTS."""


class _NoJitter:
    """An rng for core.backoff that always picks the un-jittered factor (1.0, or the top of a
    range without it): the delay becomes exactly min(cap, base × 2^(attempt-1))."""

    @staticmethod
    def uniform(a: float, b: float) -> float:
        return 1.0 if a <= 1.0 <= b else b


def backoff_seconds(attempts: int) -> int:
    """Delay before the next finalise attempt, without jitter: a retry run (not a herd of
    workers) picks due attachments up, so there is no lockstep to spread."""
    return int(
        backoff.backoff_seconds(
            attempt=attempts,
            base=settings.UPLOADS_RETRY_BACKOFF_BASE_SECONDS,
            cap=settings.UPLOADS_RETRY_BACKOFF_MAX_SECONDS,
            rng=_NoJitter,
        )
    )


def storage_name_for(attachment: Attachment) -> str:
    """`<tenant>/<attachment>/<safe filename>`: unique per attachment (a retry overwrites its
    own earlier partial copy, never another file); the original name stays in the row."""
    try:
        safe = get_valid_filename(attachment.filename)[-100:]
    except SuspiciousFileOperation:
        safe = "file"
    return f"{attachment.tenant_id}/{attachment.pk}/{safe}"


def attachment_finalise(
    *, attachment_id, source: str, retry_log: RetryLog | None = None
) -> bool | None:
    """Move staged bytes into STORAGES["attachments"], verify size and SHA-256, mark stored and
    publish upload.stored — in one transaction. Returns True (stored), False (failed attempt,
    rescheduled or failed for good) or None (not pending, or another run holds it)."""
    storage = storages["attachments"]
    with transaction.atomic():
        # A retry run only finalises what it claimed; an inline finalise only what no run
        # claimed. The row lock is waited for (a claim query may hold it for a moment).
        attachment = (
            Attachment.objects.select_for_update()
            .filter(
                pk=attachment_id,
                status=Status.PENDING,
                claimed_by=retry_log.pk if retry_log else None,
            )
            .first()
        )
        if attachment is None:
            return None
        now = timezone.now()
        path = staging.staging_path(tenant_id=attachment.tenant_id, attachment_id=attachment.pk)
        saved_name = None
        error = ""
        try:
            saved_name = _copy_and_verify(storage, attachment, path)
            with transaction.atomic():
                _mark_stored(attachment, saved_name=saved_name, source=source, now=now)
        except Exception as exc:  # storage down, disk full, verification failed, …
            error = f"{type(exc).__name__}: {exc}"[:2000]
            logger.warning("finalising attachment %s failed: %s", attachment.pk, error)
            if saved_name:
                _delete_quietly(storage, saved_name)
            _mark_failed_attempt(
                attachment,
                error=error,
                missing=isinstance(exc, StagedBytesMissing),
                source=source,
                now=now,
            )
        FinaliseAttempt.objects.create(
            tenant_id=attachment.tenant_id,
            attachment=attachment,
            retry_log=retry_log,
            source=source,
            succeeded=not error,
            error=error,
        )
        if not error:
            transaction.on_commit(lambda: staging.remove_quietly(path))
    return not error


def _mark_stored(attachment: Attachment, *, saved_name: str, source: str, now) -> None:
    updated = Attachment.objects.filter(pk=attachment.pk, status=Status.PENDING).update(
        status=Status.STORED,
        storage_name=saved_name,
        stored_at=now,
        attempts=F("attempts") + 1,
        last_attempt_at=now,
        last_error="",
        last_retry_source=source,
        next_retry_at=None,
        claimed_until=None,
        claimed_by=None,
        staged_missing_since=None,
        updated_at=now,
    )
    if updated != 1:
        raise RuntimeError("attachment changed while finalising")
    event_publish(
        tenant=attachment.tenant_id,
        event_type="upload.stored",
        topic="uploads",
        payload={
            "attachmentId": str(attachment.pk),
            "filename": attachment.filename,
            "contentType": attachment.content_type,
            "size": attachment.size,
            "sha256": attachment.sha256,
            "assessmentSessionId": (
                str(attachment.assessment_session_id) if attachment.assessment_session_id else None
            ),
            "storedAt": now.isoformat(),
        },
        idempotency_key=f"upload.stored:{attachment.pk}",
        ordering_key=str(attachment.pk),
    )


def _mark_failed_attempt(
    attachment: Attachment, *, error: str, missing: bool, source: str, now
) -> None:
    """Back to pending with the next attempt's time, or failed for good after the last allowed
    attempt — except when the staged bytes are missing, which stays pending (with the capped
    backoff) for as long as it takes: the bytes may still exist somewhere."""
    attempts = attachment.attempts + 1
    give_up = not missing and attempts >= settings.UPLOADS_MAX_ATTEMPTS
    missing_since = (attachment.staged_missing_since or now) if missing else None
    Attachment.objects.filter(pk=attachment.pk, status=Status.PENDING).update(
        staged_missing_since=missing_since,
        status=Status.FAILED if give_up else Status.PENDING,
        attempts=attempts,
        last_attempt_at=now,
        last_error=error,
        last_retry_source=source,
        next_retry_at=None if give_up else now + timedelta(seconds=backoff_seconds(attempts)),
        claimed_until=None,
        claimed_by=None,
        updated_at=now,
    )


def _copy_and_verify(storage: Storage, attachment: Attachment, path: Path) -> str:
    if not path.exists():
        where = f" (staged on {attachment.staging_host})" if attachment.staging_host else ""
        raise StagedBytesMissing(
            f"staged bytes missing on {settings.ATLAS_HOST_NAME}{where}: {path.name}"
        )
    name = storage_name_for(attachment)
    if storage.exists(name):  # a previous attempt stored it but its transaction rolled back
        storage.delete(name)
    with path.open("rb") as fh:
        saved = storage.save(name, File(fh, name=attachment.filename))
    try:
        size = storage.size(saved)
        if size != attachment.size:
            raise OSError(f"stored size {size} != expected {attachment.size}")
        digest = hashlib.sha256()
        with storage.open(saved, "rb") as stored:
            for chunk in stored.chunks(1024 * 1024):
                digest.update(chunk)
        if attachment.sha256 and digest.hexdigest() != attachment.sha256:
            raise OSError("stored bytes do not match the SHA-256 (storage corrupted them)")
    except Exception:
        _delete_quietly(storage, saved)
        raise
    return saved


def _delete_quietly(storage: Storage, name: str) -> None:
    try:
        storage.delete(name)
    except Exception:  # the storage is the thing failing; the next attempt deletes again
        logger.warning("could not remove %s from storage", name)
