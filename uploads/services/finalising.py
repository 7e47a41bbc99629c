"""Finalising: staged bytes into STORAGES["attachments"] (placing), then one short transaction
with the status change and the upload.stored event; a failure reschedules with backoff."""

from __future__ import annotations

import logging
import os
import time
import uuid
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.core.exceptions import SuspiciousFileOperation
from django.core.files.storage import storages
from django.db import connection, transaction
from django.utils import timezone
from django.utils.text import get_valid_filename

from core import backoff
from outbox.services import event_publish
from uploads import rows, staging
from uploads.models import Attachment, FinaliseAttempt, RetryLog
from uploads.services.placing import StagedBytesMissing, delete_quietly, links_into, place

logger = logging.getLogger(__name__)
Status = Attachment.Status


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


# A file name has at most 255 bytes on common file systems. The stored name is "<id>_" (37
# bytes) + the safe name, and placing links it first under ".<name>.<32 hex>.link" (39 more):
# the safe name keeps at most its last 150 bytes (its extension stays), so every name fits
# whatever script the client's file name is in (100 CJK characters are 300 bytes).
NAME_TAIL_BYTES = 150


def _tail_within(name: str, limit: int) -> str:
    """The longest end of `name` whose UTF-8 encoding fits in `limit` bytes."""
    encoded = name.encode()
    if len(encoded) <= limit:
        return name
    return encoded[-limit:].decode(errors="ignore") or "file"


def storage_name_for(attachment: Attachment) -> str:
    """`<tenant>/<last two hex digits of the id>/<attachment id>_<safe filename>`: unique per
    attachment (a retry overwrites its own earlier partial copy, never another file); the
    original name stays in the row. Names written before 2026-12 are `<tenant>/<id>/<name>`;
    rows keep the name they were stored under, so both read alike.

    Why the shard folder and not a folder per attachment: on a file system, a new folder per
    upload cost a mkdir and one more folder fsync (about 0.9 ms of a 10 ms 1 MB upload); the
    256 shards of a tenant are made once, and no folder grows past 1/256 of its files."""
    try:
        safe = _tail_within(get_valid_filename(attachment.filename)[-100:], NAME_TAIL_BYTES)
    except SuspiciousFileOperation:
        safe = "file"
    attachment_id = uuid.UUID(str(attachment.pk))
    return f"{attachment.tenant_id}/{attachment_id.hex[-2:]}/{attachment_id}_{safe}"


def inline_claim(now) -> dict:
    """The claim an upload takes for finalising it inline, in the same UPDATE that makes it
    pending: retry runs leave it alone for UPLOADS_RETRY_LEASE_SECONDS, then take it over (the
    process that held it may have died)."""
    return {
        "claimed_by": uuid.uuid4(),
        "claimed_until": now + timedelta(seconds=settings.UPLOADS_RETRY_LEASE_SECONDS),
    }


def _claim_inline(attachment_id) -> Attachment | None:
    """An inline finalise (multipart) claims what no run claimed."""
    claim = inline_claim(timezone.now())
    if not Attachment.objects.filter(
        pk=attachment_id, status=Status.PENDING, claimed_by__isnull=True
    ).update(**claim):
        return None
    return Attachment.objects.filter(pk=attachment_id, claimed_by=claim["claimed_by"]).first()


def attachment_finalise(
    *,
    attachment_id,
    source: str,
    retry_log: RetryLog | None = None,
    claimed: Attachment | None = None,
) -> bool | None:
    """Place the staged bytes into STORAGES["attachments"] (uploads.services.placing: a hard
    link on the same file system, a verified copy elsewhere), then one short transaction marks
    the attachment stored and publishes upload.stored. Returns True (stored), False (failed
    attempt, rescheduled or failed for good) or None (not pending, or someone else holds it).

    Who may finalise is decided by the claim on the row, not by a row lock: a retry run
    finalises what it claimed (claimed_by = its RetryLog id), an upload what it claimed inline
    (`claimed`, or a claim taken here). No lock or transaction is held while bytes move; every
    write checks the claim, so a claim taken over after its lease ran out makes the late
    holder's writes no-ops."""
    if claimed is not None:
        attachment: Attachment | None = claimed
    elif retry_log is not None:
        attachment = Attachment.objects.filter(
            pk=attachment_id, status=Status.PENDING, claimed_by=retry_log.pk
        ).first()
    else:
        attachment = _claim_inline(attachment_id)
    if attachment is None:
        return None
    storage = storages["attachments"]
    now = timezone.now()
    path = staging.staging_path(tenant_id=attachment.tenant_id, attachment_id=attachment.pk)
    saved_name = None
    error = ""
    try:
        test_pause("staged")
        saved_name = place(storage, attachment, path, storage_name_for(attachment))
        test_pause("placed")
        with transaction.atomic():
            if not _mark_stored(
                attachment, saved_name=saved_name, source=source, now=now, retry_log=retry_log
            ):
                return None  # the claim was taken over: the new holder finishes the job
    except Exception as exc:  # storage down, disk full, verification failed, …
        error = f"{type(exc).__name__}: {exc}"[:2000]
        logger.warning("finalising attachment %s failed: %s", attachment.pk, error)
        if saved_name and not links_into(storage, path):
            delete_quietly(storage, saved_name)
        with transaction.atomic():
            if _mark_failed_attempt(
                attachment,
                error=error,
                missing=isinstance(exc, StagedBytesMissing),
                source=source,
                now=now,
            ):
                _record_attempt(attachment, retry_log=retry_log, source=source, error=error)
        return False
    staging.remove_quietly(path)
    return True


def _record_attempt(attachment: Attachment, *, retry_log, source: str, error: str) -> None:
    FinaliseAttempt.objects.create(
        tenant_id=attachment.tenant_id,
        attachment=attachment,
        retry_log=retry_log,
        source=source,
        succeeded=not error,
        error=error,
    )


def test_pause(point: str) -> None:
    """Crash tests only: with ATLAS_TEST_PAUSE_FINALISING="<point>:<file>", finalising writes
    <file> when it reaches <point> ("staged": the bytes are acknowledged, nothing is in storage
    yet; "placed": they are in storage, the transaction that says so has not run) and waits
    there, so a test can SIGKILL the process at exactly that point. Unset everywhere else."""
    wanted = os.environ.get("ATLAS_TEST_PAUSE_FINALISING", "")
    if not wanted.startswith(f"{point}:"):
        return
    Path(wanted.split(":", 1)[1]).write_text(str(os.getpid()))
    time.sleep(120)


# The stored status and the successful attempt's row in one statement (the attempt only when
# the claim still held: a claim taken over leaves both untouched).
_STORED_SQL = f"""
WITH stored AS (
    UPDATE {rows.TABLE} SET status = %(stored)s, storage_name = %(name)s, stored_at = %(now)s,
        attempts = attempts + 1, last_attempt_at = %(now)s, last_error = '',
        last_retry_source = %(source)s, next_retry_at = NULL, claimed_until = NULL,
        claimed_by = NULL, staged_missing_since = NULL, updated_at = %(now)s
    WHERE id = %(id)s AND status = %(pending)s AND claimed_by IS NOT DISTINCT FROM %(claim)s
    RETURNING id, tenant_id
)
INSERT INTO {FinaliseAttempt._meta.db_table}
    (created_at, updated_at, tenant_id, attachment_id, retry_log_id, source, succeeded, error)
SELECT %(recorded)s, %(recorded)s, tenant_id, id, %(retry_log)s::uuid, %(source)s, true, ''
FROM stored
"""


def _mark_stored(
    attachment: Attachment, *, saved_name: str, source: str, now, retry_log: RetryLog | None
) -> bool:
    """Stored, its attempt recorded and upload.stored published; False when the claim was
    taken over (nothing written)."""
    params = {
        "stored": Status.STORED.value,
        "pending": Status.PENDING.value,
        "name": saved_name,
        "now": now,
        "source": str(source),
        "id": str(attachment.pk),
        "claim": str(attachment.claimed_by) if attachment.claimed_by else None,
        "recorded": timezone.now(),
        "retry_log": str(retry_log.pk) if retry_log is not None else None,
    }
    with connection.cursor() as cursor:
        cursor.execute(_STORED_SQL, params)
        if cursor.rowcount != 1:
            return False
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
    return True


def _mark_failed_attempt(
    attachment: Attachment, *, error: str, missing: bool, source: str, now
) -> bool:
    """Back to pending with the next attempt's time, or failed for good after the last allowed
    attempt — except when the staged bytes are missing, which stays pending (with the capped
    backoff) for as long as it takes: the bytes may still exist somewhere."""
    attempts = attachment.attempts + 1
    give_up = not missing and attempts >= settings.UPLOADS_MAX_ATTEMPTS
    missing_since = (attachment.staged_missing_since or now) if missing else None
    return bool(
        Attachment.objects.filter(
            pk=attachment.pk, status=Status.PENDING, claimed_by=attachment.claimed_by
        ).update(
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
    )
