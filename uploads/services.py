"""Uploads writes: receive (multipart, tus), finalise into storage, retry runs, alerts.

State machine of an attachment (enforced here by conditional UPDATEs):

    receiving ──(last byte, checksum ok)──► pending ──(finalise ok)──► stored
                                              │  ▲
                            (finalise fails)  ▼  │ (retry run / admin action)
                                   pending + next_retry_at ──(max attempts)──► failed
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.core.exceptions import SuspiciousFileOperation
from django.core.files import File
from django.core.files.storage import storages
from django.db import IntegrityError, connection, transaction
from django.db.models import F, Q
from django.utils import timezone
from django.utils.text import get_valid_filename

from core.api.errors import ApiError
from tenants.scoping import tenant_queryset
from uploads import staging
from uploads.models import Attachment, FinaliseAttempt, HealthAlert, RetryLog, RetrySource

logger = logging.getLogger(__name__)
Status = Attachment.Status

# Allowed transitions (from → to); the UPDATEs below filter on the "from" side.
TRANSITIONS = {
    Status.RECEIVING: {Status.PENDING},
    Status.PENDING: {Status.STORED, Status.PENDING, Status.FAILED},
    Status.FAILED: {Status.PENDING},  # staff / operator retry
    Status.STORED: set(),
}


class PermanentFinaliseError(Exception):
    """Retrying cannot help (the staged bytes are gone): the attachment fails at once."""


# --- Limits and checks ---------------------------------------------------------------------


def _check_limits(*, size: int, content_type: str) -> None:
    if size > settings.UPLOADS_MAX_BYTES:
        raise ApiError(
            "file_too_large",
            f"Files may be at most {settings.UPLOADS_MAX_BYTES} bytes.",
            status_code=413,
            details={"maxBytes": settings.UPLOADS_MAX_BYTES, "size": size},
        )
    if not staging.content_type_allowed(content_type):
        raise ApiError(
            "content_type_not_allowed",
            f"Content type {content_type!r} is not accepted.",
            status_code=415,
            details={"allowed": list(settings.UPLOADS_ALLOWED_CONTENT_TYPES)},
        )


def _check_session(*, tenant_id, assessment_session_id) -> None:
    if assessment_session_id is None:
        return
    from assessments.models import AssessmentSession

    if (
        not tenant_queryset(AssessmentSession, tenant_id=tenant_id)
        .filter(pk=assessment_session_id)
        .exists()
    ):
        raise ApiError(
            "unknown_assessment_session",
            "No such assessment session.",
            details={"assessmentSessionId": str(assessment_session_id)},
        )


def _clean_filename(name: str) -> str:
    name = (name or "").replace("\\", "/").split("/")[-1].strip().replace("\x00", "")
    return (name or "upload")[:255]


# --- Multipart ------------------------------------------------------------------------------


def attachment_receive(
    *,
    tenant_id,
    upload_id,
    staged: staging.StagedFile,
    expected_sha256: str = "",
    assessment_session_id=None,
) -> tuple[Attachment, bool]:
    """Take a fully staged multipart file. Returns (attachment, created).

    The same uploadId with the same bytes returns the existing attachment (created=False);
    different bytes → 409. A checksum mismatch keeps nothing. The staged temp file is always
    either moved under the attachment or removed.
    """
    try:
        _check_limits(size=staged.size, content_type=staged.content_type)
        if expected_sha256 and expected_sha256.lower() != staged.sha256:
            raise ApiError(
                "checksum_mismatch",
                "The file's SHA-256 is not the one you sent; nothing was kept.",
                details={"expected": expected_sha256.lower(), "received": staged.sha256},
            )
        _check_session(tenant_id=tenant_id, assessment_session_id=assessment_session_id)
        existing = _existing_same_bytes(tenant_id=tenant_id, upload_id=upload_id, staged=staged)
        if existing is not None:
            return existing, False
        now = timezone.now()
        target = staging.staging_path(tenant_id=tenant_id, attachment_id=upload_id)
        try:
            with transaction.atomic():
                attachment = Attachment.objects.create(
                    id=upload_id,
                    tenant_id=tenant_id,
                    assessment_session_id=assessment_session_id,
                    channel=Attachment.Channel.MULTIPART,
                    filename=_clean_filename(staged.name),
                    content_type=staged.content_type[:255],
                    size=staged.size,
                    upload_offset=staged.size,
                    sha256=staged.sha256,
                    expected_sha256=(expected_sha256 or "").lower(),
                    status=Status.PENDING,
                    next_retry_at=now,
                )
                staging.move_durably(staged.path, target)
        except IntegrityError:
            # A concurrent request with the same uploadId won the insert.
            existing = _existing_same_bytes(tenant_id=tenant_id, upload_id=upload_id, staged=staged)
            if existing is not None:
                return existing, False
            raise _conflict(upload_id) from None
    finally:
        staging.remove_quietly(staged.path)
    attachment_finalise(attachment_id=attachment.pk, source=RetrySource.UPLOAD)
    attachment.refresh_from_db()
    return attachment, True


def _conflict(upload_id) -> ApiError:
    return ApiError(
        "upload_id_conflict",
        "This uploadId was used for different bytes.",
        status_code=409,
        details={"uploadId": str(upload_id)},
    )


def _existing_same_bytes(*, tenant_id, upload_id, staged) -> Attachment | None:
    found = Attachment.objects.filter(pk=upload_id).first()
    if found is None:
        return None
    if (
        str(found.tenant_id) == str(tenant_id)
        and found.status != Status.RECEIVING
        and found.sha256 == staged.sha256
        and found.size == staged.size
    ):
        return found
    raise _conflict(upload_id)


# --- tus ------------------------------------------------------------------------------------


def tus_expiry():
    return timezone.now() + timedelta(hours=settings.UPLOADS_TUS_EXPIRY_HOURS)


def tus_upload_create(
    *,
    tenant_id,
    upload_id,
    length: int,
    filename: str,
    content_type: str,
    expected_sha256: str = "",
    assessment_session_id=None,
    raw_metadata: str = "",
) -> tuple[Attachment, bool]:
    """tus creation. An existing unfinished upload with the same id and length is returned
    (a re-sent POST), so the client can HEAD it and resume; anything else with that id → 409."""
    _check_limits(size=length, content_type=content_type)
    _check_session(tenant_id=tenant_id, assessment_session_id=assessment_session_id)
    existing = Attachment.objects.filter(pk=upload_id).first()
    if existing is not None and _expired_own(existing, tenant_id=tenant_id):
        # the client starts over after 410: the expired leftovers make room for it
        if Attachment.objects.filter(
            pk=existing.pk, status=Status.RECEIVING, expires_at__lte=timezone.now()
        ).delete()[0]:
            staging.remove_quietly(
                staging.staging_path(tenant_id=tenant_id, attachment_id=existing.pk)
            )
        existing = None
    if existing is not None:
        return _tus_existing(existing, tenant_id=tenant_id, length=length), False
    path = staging.staging_path(tenant_id=tenant_id, attachment_id=upload_id)
    try:
        with transaction.atomic():
            attachment = Attachment.objects.create(
                id=upload_id,
                tenant_id=tenant_id,
                assessment_session_id=assessment_session_id,
                channel=Attachment.Channel.TUS,
                filename=_clean_filename(filename),
                content_type=(content_type or "application/octet-stream")[:255],
                size=length,
                expected_sha256=(expected_sha256 or "").lower(),
                status=Status.RECEIVING,
                expires_at=tus_expiry(),
                tus_metadata=raw_metadata,
            )
            staging.create_empty(path)
    except IntegrityError:
        existing = Attachment.objects.filter(pk=upload_id).first()
        if existing is None:
            raise
        return _tus_existing(existing, tenant_id=tenant_id, length=length), False
    if length == 0:
        attachment = _tus_complete(attachment)
    return attachment, True


def _expired_own(attachment: Attachment, *, tenant_id) -> bool:
    return (
        str(attachment.tenant_id) == str(tenant_id)
        and attachment.status == Status.RECEIVING
        and attachment.expires_at is not None
        and attachment.expires_at <= timezone.now()
    )


def _tus_existing(existing: Attachment, *, tenant_id, length: int) -> Attachment:
    if (
        str(existing.tenant_id) == str(tenant_id)
        and existing.status == Status.RECEIVING
        and existing.size == length
    ):
        return existing
    details = {"uploadId": str(existing.pk)}
    if str(existing.tenant_id) == str(tenant_id):
        details["status"] = existing.status
    raise ApiError(
        "upload_exists",
        "An upload with this id exists already (finished, or with another length).",
        status_code=409,
        details=details,
    )


CHECKSUM_ALGORITHMS = {"sha1": hashlib.sha1, "sha256": hashlib.sha256, "md5": hashlib.md5}


def parse_checksum_header(value: str | None) -> tuple[str, bytes] | None:
    """`Upload-Checksum: <algorithm> <base64 digest>`."""
    if value is None:
        return None
    parts = value.strip().split(" ")
    if len(parts) != 2:
        raise ApiError("invalid_checksum_header", "Upload-Checksum must be '<algorithm> <base64>'.")
    algorithm, encoded = parts[0].lower(), parts[1]
    if algorithm not in CHECKSUM_ALGORITHMS:
        raise ApiError(
            "unsupported_checksum_algorithm",
            f"Checksum algorithm {algorithm!r} is not supported.",
            details={"supported": sorted(CHECKSUM_ALGORITHMS)},
        )
    try:
        digest = base64.b64decode(encoded, validate=True)
    except ValueError:
        raise ApiError(
            "invalid_checksum_header", "The Upload-Checksum digest is not valid base64."
        ) from None
    return algorithm, digest


class _UploadLock:
    """A session-level advisory lock per upload: one PATCH/DELETE at a time, without keeping a
    transaction open while a slow client sends its bytes."""

    def __init__(self, attachment_id):
        # 64 bits of the UUID (random in a v4 id): a collision between two uploads written at
        # the same moment is practically impossible, and would only make one of them wait.
        value = uuid.UUID(str(attachment_id)).int & (2**64 - 1)
        self.key = value - 2**64 if value >= 2**63 else value

    def __enter__(self):
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(%s)", [self.key])
            (locked,) = cursor.fetchone()
        if not locked:
            raise ApiError(
                "upload_locked",
                "Another request is writing to this upload; retry shortly.",
                status_code=423,
            )
        return self

    def __exit__(self, *exc):
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [self.key])
        return False


def _check_expired(attachment: Attachment) -> None:
    if (
        attachment.status == Status.RECEIVING
        and attachment.expires_at is not None
        and attachment.expires_at <= timezone.now()
    ):
        raise ApiError("upload_expired", "This upload has expired.", status_code=410)


def tus_upload_get(*, tenant_id, upload_id) -> Attachment:
    from tenants.scoping import tenant_get_or_404

    attachment = tenant_get_or_404(Attachment, tenant_id=tenant_id, pk=upload_id)
    _check_expired(attachment)
    return attachment


def tus_upload_append(
    *,
    tenant_id,
    upload_id,
    offset: int,
    read: Callable[[int], bytes],
    content_length: int | None,
    checksum: tuple[str, bytes] | None,
) -> Attachment:
    """Append a PATCH body at `offset`, streaming it to the staged file in 64 KiB chunks.

    A connection cut mid-body keeps (and acknowledges) the bytes that arrived, unless the
    request carried a checksum, which then cannot be verified: those bytes are dropped.
    """
    with _UploadLock(upload_id):
        attachment = tus_upload_get(tenant_id=tenant_id, upload_id=upload_id)
        if attachment.status != Status.RECEIVING or offset != attachment.upload_offset:
            raise ApiError(
                "offset_mismatch",
                "Upload-Offset does not match the upload's current offset.",
                status_code=409,
                details={"expected": attachment.upload_offset, "received": offset},
            )
        remaining = attachment.size - offset
        if content_length is not None and content_length > remaining:
            raise ApiError(
                "upload_length_exceeded",
                "The body goes past the announced Upload-Length.",
                status_code=413,
                details={"remaining": remaining, "received": content_length},
            )
        path = staging.staging_path(tenant_id=tenant_id, attachment_id=upload_id)
        hasher = CHECKSUM_ALGORITHMS[checksum[0]]() if checksum else None
        to_read = remaining if content_length is None else content_length
        received = 0
        cut = False
        too_much = False
        with path.open("r+b") as fh:
            fh.seek(offset)
            fh.truncate(offset)  # drop any unacknowledged tail
            while received < to_read:
                try:
                    chunk = read(min(staging.CHUNK, to_read - received))
                except Exception:  # the client went away mid-body
                    cut = True
                    break
                if not chunk:
                    cut = content_length is not None
                    break
                fh.write(chunk)
                if hasher:
                    hasher.update(chunk)
                received += len(chunk)
            if content_length is None and received >= remaining:
                too_much = bool(_peek(read))
            if checksum and (cut or hasher.digest() != checksum[1]) or too_much:
                fh.truncate(offset)
                fh.flush()
                os_fsync(fh)
                if too_much:
                    raise ApiError(
                        "upload_length_exceeded",
                        "The body goes past the announced Upload-Length.",
                        status_code=413,
                    )
                raise ApiError(
                    "checksum_mismatch",
                    "The chunk's checksum does not match; it was discarded.",
                    status_code=460,
                    details={"algorithm": checksum[0], "offset": offset},
                )
            fh.flush()
            os_fsync(fh)
        new_offset = offset + received
        Attachment.objects.filter(
            pk=upload_id, status=Status.RECEIVING, upload_offset=offset
        ).update(upload_offset=new_offset, expires_at=tus_expiry(), updated_at=timezone.now())
        attachment.refresh_from_db()
        if new_offset == attachment.size:
            attachment = _tus_complete(attachment)
        return attachment


def _peek(read) -> bytes:
    try:
        return read(1)
    except Exception:
        return b""


def os_fsync(fh) -> None:
    os.fsync(fh.fileno())


def _tus_complete(attachment: Attachment) -> Attachment:
    """All bytes are staged: verify the whole-file checksum, then finalise inline."""
    path = staging.staging_path(tenant_id=attachment.tenant_id, attachment_id=attachment.pk)
    sha256 = staging.file_sha256(path)
    if attachment.expected_sha256 and attachment.expected_sha256 != sha256:
        Attachment.objects.filter(pk=attachment.pk).delete()
        staging.remove_quietly(path)
        raise ApiError(
            "checksum_mismatch",
            "The file's SHA-256 is not the one announced; nothing was kept.",
            status_code=460,
            details={"expected": attachment.expected_sha256, "received": sha256},
        )
    Attachment.objects.filter(pk=attachment.pk, status=Status.RECEIVING).update(
        status=Status.PENDING,
        sha256=sha256,
        expires_at=None,
        next_retry_at=timezone.now(),
        updated_at=timezone.now(),
    )
    attachment_finalise(attachment_id=attachment.pk, source=RetrySource.UPLOAD)
    attachment.refresh_from_db()
    return attachment


def tus_upload_terminate(*, tenant_id, upload_id) -> None:
    """tus termination: an unfinished upload and its bytes are removed. A finished one is
    kept (409 upload_complete): files that reached us are never lost by a client call."""
    with _UploadLock(upload_id):
        from tenants.scoping import tenant_get_or_404

        attachment = tenant_get_or_404(Attachment, tenant_id=tenant_id, pk=upload_id)
        if attachment.status != Status.RECEIVING:
            raise ApiError(
                "upload_complete",
                "This upload is complete and cannot be terminated.",
                status_code=409,
                details={"status": attachment.status},
            )
        deleted, _ = Attachment.objects.filter(pk=upload_id, status=Status.RECEIVING).delete()
        if deleted:
            staging.remove_quietly(
                staging.staging_path(tenant_id=tenant_id, attachment_id=upload_id)
            )


def uploads_expired_cleanup(*, now=None) -> int:
    """Remove tus uploads that expired unfinished (rows and staged bytes)."""
    now = now or timezone.now()
    removed = 0
    rows = Attachment.objects.filter(status=Status.RECEIVING, expires_at__lte=now).values_list(
        "pk", "tenant_id"
    )[:1000]
    for pk, tenant_id in rows:
        deleted, _ = Attachment.objects.filter(
            pk=pk, status=Status.RECEIVING, expires_at__lte=now
        ).delete()
        if deleted:
            staging.remove_quietly(staging.staging_path(tenant_id=tenant_id, attachment_id=pk))
            removed += 1
    return removed


# --- Finalisation ---------------------------------------------------------------------------


def storage_name_for(attachment: Attachment) -> str:
    """`<tenant>/<attachment>/<safe filename>`: unique per attachment (a retry overwrites its
    own earlier partial copy, never another file); the original name stays in the row."""
    try:
        safe = get_valid_filename(attachment.filename)[-100:]
    except SuspiciousFileOperation:
        safe = "file"
    return f"{attachment.tenant_id}/{attachment.pk}/{safe}"


def backoff_seconds(attempts: int) -> int:
    base = settings.UPLOADS_RETRY_BACKOFF_BASE_SECONDS
    return int(min(settings.UPLOADS_RETRY_BACKOFF_MAX_SECONDS, base * 2 ** max(0, attempts - 1)))


def attachment_finalise(*, attachment_id, source: str, retry_log: RetryLog | None = None):
    """Move staged bytes into STORAGES["attachments"], verify size and SHA-256, mark stored and
    publish upload.stored — in one transaction. Returns True (stored), False (failed attempt,
    rescheduled or failed for good) or None (not pending, or another run holds it)."""
    from outbox.services import event_publish

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
        permanent = False
        try:
            saved_name = _copy_and_verify(storage, attachment, path)
            with transaction.atomic():
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
                            str(attachment.assessment_session_id)
                            if attachment.assessment_session_id
                            else None
                        ),
                        "storedAt": now.isoformat(),
                    },
                    idempotency_key=f"upload.stored:{attachment.pk}",
                    ordering_key=str(attachment.pk),
                )
        except Exception as exc:  # storage down, disk full, verification failed, …
            permanent = isinstance(exc, PermanentFinaliseError)
            error = f"{type(exc).__name__}: {exc}"[:2000]
            logger.warning("finalising attachment %s failed: %s", attachment.pk, error)
            if saved_name:
                _delete_quietly(storage, saved_name)
            attempts = attachment.attempts + 1
            give_up = permanent or attempts >= settings.UPLOADS_MAX_ATTEMPTS
            Attachment.objects.filter(pk=attachment.pk, status=Status.PENDING).update(
                status=Status.FAILED if give_up else Status.PENDING,
                attempts=attempts,
                last_attempt_at=now,
                last_error=error,
                last_retry_source=source,
                next_retry_at=(
                    None if give_up else now + timedelta(seconds=backoff_seconds(attempts))
                ),
                claimed_until=None,
                claimed_by=None,
                updated_at=now,
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


def _copy_and_verify(storage, attachment: Attachment, path: Path) -> str:
    if not path.exists():
        raise PermanentFinaliseError(f"staged bytes are missing ({path.name})")
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


def _delete_quietly(storage, name: str) -> None:
    try:
        storage.delete(name)
    except Exception:  # the storage is the thing failing; the next attempt deletes again
        logger.warning("could not remove %s from storage", name)


# --- Retry runs -----------------------------------------------------------------------------


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
    attachment_ids=None,
    limit: int | None = None,
    progress: Callable[[int, int, bool | None], None] | None = None,
) -> RetryLog:
    """One retry run: claim, finalise each, write the RetryLog row (also when it breaks)."""
    if source not in {RetrySource.SCHEDULED, RetrySource.CLIENT_SYNC, RetrySource.MANUAL}:
        raise ApiError("invalid_retry_source", f"Unknown retry source {source!r}.")
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


def retry_logs_prune(*, now=None) -> int:
    """Drop retry logs (and attempt records, health alerts) older than
    UPLOADS_RETRY_LOG_RETENTION_DAYS. Returns the number of retry logs removed."""
    cutoff = (now or timezone.now()) - timedelta(days=settings.UPLOADS_RETRY_LOG_RETENTION_DAYS)
    FinaliseAttempt.objects.filter(created_at__lt=cutoff).delete()
    HealthAlert.objects.filter(hour__lt=cutoff).delete()
    logs, _ = RetryLog.objects.filter(started_at__lt=cutoff).delete()
    return logs


# --- Health alert ---------------------------------------------------------------------------


# outbox error codes for a tenant whose Slack target cannot take the alert → recorded reason
SKIP_ALERT_REASONS = {
    "unknown_target": "tenant has no slack target",
    "target_disabled": "the tenant's slack target is disabled",
}


def health_alert_check(*, now=None) -> list[HealthAlert]:
    """For each tenant: if the finalisation failure rate of the last hour is above the
    threshold (with enough attempts), publish uploads.health_degraded to its Slack target —
    at most once per tenant and hour (HealthAlert row + idempotency key per hour)."""
    from django.db.models import Count

    from outbox.services import event_publish

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
        outcome, reason, event_id = HealthAlert.Outcome.FIRED, "", None
        try:
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
                except ApiError as exc:
                    if exc.error_code not in SKIP_ALERT_REASONS:
                        raise
                    outcome = HealthAlert.Outcome.SKIPPED
                    reason = SKIP_ALERT_REASONS[exc.error_code]
                alert.outcome, alert.reason, alert.event_id = outcome, reason, event_id
                alert.save(update_fields=["outcome", "reason", "event_id", "updated_at"])
        except IntegrityError:  # a concurrent check recorded this hour already
            continue
        alerts.append(alert)
    return alerts
