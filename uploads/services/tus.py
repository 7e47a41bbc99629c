"""The tus 1.0 protocol's writes: creation, append (streamed to the staged file), completion,
termination, and the cleanup of uploads that expired unfinished.

Refusals are DomainErrors; the tus views turn their kinds into tus status codes (a checksum
mismatch is 460 there, a held lock 423, an expired upload 410).
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import IO, Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from core.errors import DomainError, ErrorKind
from core.session_proof import SessionProof
from tenants.scoping import tenant_get_or_404
from uploads import rows, running_hash, staging
from uploads.models import Attachment, RetrySource
from uploads.services.finalising import attachment_finalise, inline_claim
from uploads.services.quotas import quota_reserve, staging_space_check
from uploads.services.receiving import check_limits, check_session, clean_filename

logger = logging.getLogger("uploads.tus")

Status = Attachment.Status

CHECKSUM_ALGORITHMS: dict[str, Callable[[], Any]] = {
    "sha1": hashlib.sha1,
    "sha256": hashlib.sha256,
    "md5": hashlib.md5,
}


def tus_expiry() -> datetime:
    return timezone.now() + timedelta(hours=settings.UPLOADS_TUS_EXPIRY_HOURS)


def tus_upload_create(
    *,
    tenant_id,
    upload_id: uuid.UUID,
    length: int,
    filename: str,
    content_type: str,
    expected_sha256: str = "",
    assessment_session_id=None,
    raw_metadata: str = "",
    publishable: bool = False,
    session_proof: SessionProof | None = None,
    _retried: bool = False,
) -> tuple[Attachment, bool]:
    """tus creation. An existing unfinished upload with the same id and length is returned
    (a re-sent POST), so the client can HEAD it and resume; anything else with that id → 409.
    A new upload reserves its announced length in the tenant's quota and counts as open until
    it completes, is terminated or expires."""
    check_limits(size=length, content_type=content_type, publishable=publishable)
    check_session(
        tenant_id=tenant_id,
        assessment_session_id=assessment_session_id,
        session_proof=session_proof,
    )
    path = staging.staging_path(tenant_id=tenant_id, attachment_id=upload_id)
    try:
        # No read first: the insert is the check (a re-sent POST meets the primary key).
        staging_space_check(size=length)
        with transaction.atomic():
            quota_reserve(tenant_id=tenant_id, size=length, opens_upload=True)
            attachment = Attachment(
                id=upload_id,
                tenant_id=tenant_id,
                assessment_session_id=assessment_session_id,
                channel=Attachment.Channel.TUS,
                filename=clean_filename(filename),
                content_type=(content_type or "application/octet-stream")[:255],
                size=length,
                expected_sha256=(expected_sha256 or "").lower(),
                status=Status.RECEIVING,
                expires_at=tus_expiry(),
                tus_metadata=raw_metadata,
                staging_host=settings.ATLAS_HOST_NAME,
            )
            rows.insert(attachment)
            staging.create_empty(path)
    except (IntegrityError, DomainError):
        # the id exists (a re-sent POST, or a concurrent creation won the insert), or the
        # quota refused: an upload that exists with this id answers either way
        existing = Attachment.objects.filter(pk=upload_id).first()
        if existing is None:
            raise
        if _expired_own(existing, tenant_id=tenant_id) and not _retried:
            # the client starts over after 410: the expired leftovers make room for it
            if Attachment.objects.filter(
                pk=existing.pk, status=Status.RECEIVING, expires_at__lte=timezone.now()
            ).delete()[0]:
                staging.remove_quietly(path)
            return tus_upload_create(
                tenant_id=tenant_id,
                upload_id=upload_id,
                length=length,
                filename=filename,
                content_type=content_type,
                expected_sha256=expected_sha256,
                assessment_session_id=assessment_session_id,
                raw_metadata=raw_metadata,
                publishable=publishable,
                session_proof=session_proof,
                _retried=True,
            )
        return _tus_existing(existing, tenant_id=tenant_id, length=length), False
    if length == 0:
        staging.fsync_dir(path.parent)  # complete at once: its (empty) file must be durable
        _tus_complete(attachment, sha256=hashlib.sha256().hexdigest())
        _finalise_inline(attachment)
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
    raise DomainError(
        "upload_exists",
        "An upload with this id exists already (finished, or with another length).",
        kind=ErrorKind.CONFLICT,
        details=details,
    )


_READ_AND_LOCK_SQL = (
    f"SELECT {rows.COLUMNS}, pg_try_advisory_lock(%s) FROM {rows.TABLE}"
    " WHERE tenant_id = %s AND id = %s"
)


class UploadLock:
    """A session-level advisory lock per upload: one PATCH/DELETE at a time, without keeping a
    transaction open while a slow client sends its bytes."""

    def __init__(self, attachment_id) -> None:
        # 64 bits of the UUID (random in a v4 id): a collision between two uploads written at
        # the same moment is practically impossible, and would only make one of them wait.
        value = uuid.UUID(str(attachment_id)).int & (2**64 - 1)
        self.key = value - 2**64 if value >= 2**63 else value
        self.held = False

    def __enter__(self) -> UploadLock:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(%s)", [self.key])
            (locked,) = cursor.fetchone()
        self._taken(locked)
        return self

    def acquire_reading(self, *, tenant_id, upload_id) -> Attachment | None:
        """Read the upload and take the lock in one statement (the lock only when the row
        exists and is the tenant's). None: no such upload, nothing locked."""
        with connection.cursor() as cursor:
            cursor.execute(_READ_AND_LOCK_SQL, [self.key, str(tenant_id), str(upload_id)])
            row = cursor.fetchone()
        if row is None:
            return None
        self._taken(row[-1])
        return rows.from_row(row[:-1])

    def _taken(self, locked: bool) -> None:
        if not locked:
            raise DomainError(
                "upload_locked",
                "Another request is writing to this upload; retry shortly.",
                kind=ErrorKind.LOCKED,
            )
        self.held = True

    def release(self) -> None:
        if self.held:
            self.held = False
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [self.key])

    def __exit__(self, *exc) -> None:
        self.release()


def _check_expired(attachment: Attachment) -> None:
    if (
        attachment.status == Status.RECEIVING
        and attachment.expires_at is not None
        and attachment.expires_at <= timezone.now()
    ):
        raise DomainError("upload_expired", "This upload has expired.", kind=ErrorKind.GONE)


def tus_upload_get(*, tenant_id, upload_id) -> Attachment:
    attachment = tenant_get_or_404(Attachment, tenant_id=tenant_id, pk=upload_id)
    _check_expired(attachment)
    return attachment


def _length_exceeded(details: dict | None = None) -> DomainError:
    return DomainError(
        "upload_length_exceeded",
        "The body goes past the announced Upload-Length.",
        kind=ErrorKind.TOO_LARGE,
        details=details,
    )


def tus_upload_append(
    *,
    tenant_id,
    upload_id,
    offset: int,
    read: Callable[[int], bytes],
    content_length: int | None,
    checksum: tuple[str, bytes] | None,
) -> Attachment:
    """Append a PATCH body at `offset`, streaming it to the staged file in 256 KiB chunks while
    hashing it (uploads.running_hash).

    Three statements: read the upload and take its lock, one UPDATE that moves the offset (the
    last PATCH's also makes it pending with its SHA-256: one commit acknowledges the bytes and
    hands them to finalising), unlock. Finalising runs after the unlock.
    A connection cut mid-body keeps (and acknowledges) the bytes that arrived, unless the
    request carried a checksum, which then cannot be verified: those bytes are dropped.
    """
    lock = UploadLock(upload_id)
    attachment = lock.acquire_reading(tenant_id=tenant_id, upload_id=upload_id)
    if attachment is None:
        raise DomainError("not_found", "No such object.", kind=ErrorKind.NOT_FOUND)
    try:
        _check_expired(attachment)
        completed = _append_locked(
            attachment,
            offset=offset,
            read=read,
            content_length=content_length,
            checksum=checksum,
        )
    finally:
        lock.release()
    if completed:
        _finalise_inline(attachment)
    return attachment


def _append_locked(
    attachment: Attachment,
    *,
    offset: int,
    read: Callable[[int], bytes],
    content_length: int | None,
    checksum: tuple[str, bytes] | None,
) -> bool:
    """Write the body and move the row's offset; True when that completed the upload."""
    if attachment.status != Status.RECEIVING or offset != attachment.upload_offset:
        raise DomainError(
            "offset_mismatch",
            "Upload-Offset does not match the upload's current offset.",
            kind=ErrorKind.CONFLICT,
            details={"expected": attachment.upload_offset, "received": offset},
        )
    remaining = attachment.size - offset
    if content_length is not None and content_length > remaining:
        raise _length_exceeded({"remaining": remaining, "received": content_length})
    path = staging.staging_path(tenant_id=attachment.tenant_id, attachment_id=attachment.pk)
    if not path.exists():
        raise _staged_elsewhere(attachment)
    algorithm, expected_digest = checksum if checksum else ("", b"")
    hasher = CHECKSUM_ALGORITHMS[algorithm]() if algorithm else None
    to_read = remaining if content_length is None else content_length
    identity = {"upload_id": attachment.pk, "created_at": attachment.created_at}
    digest = running_hash.resume(**identity, offset=offset)  # None: hashed when complete
    hashing = running_hash.Overlapped([d for d in (digest, hasher) if d is not None])
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
            staging.start_writeback(fh, offset + received, len(chunk))
            hashing.update(chunk)
            received += len(chunk)
        hashing.wait()
        if content_length is None and received >= remaining:
            too_much = bool(_peek(read))
        # a cut body with a checksum cannot be verified: its bytes are dropped too
        bad_checksum = hasher is not None and (cut or hasher.digest() != expected_digest)
        if bad_checksum or too_much:
            fh.truncate(offset)
            _flush_durably(fh)
            # the running hash has seen the dropped bytes: not kept (the file is hashed at the end)
            if too_much:
                raise _length_exceeded()
            raise DomainError(
                "checksum_mismatch",
                "The chunk's checksum does not match; it was discarded.",
                kind=ErrorKind.CHECKSUM_MISMATCH,
                details={"algorithm": algorithm, "offset": offset},
            )
        _flush_durably(fh)
    if offset == 0:
        staging.fsync_dir(path.parent)  # the file's entry, with its first acknowledged bytes
    new_offset = offset + received
    if new_offset == attachment.size:
        sha256 = (
            digest.hexdigest() if digest is not None else running_hash.file_digest(path, new_offset)
        )
        _tus_complete(attachment, sha256=sha256)
        return True
    now = timezone.now()
    expires_at = tus_expiry()
    moved = rows.update(
        attachment.pk,
        where={"status": Status.RECEIVING, "upload_offset": offset},
        upload_offset=new_offset,
        expires_at=expires_at,
        updated_at=now,
    )
    if moved:
        attachment.upload_offset, attachment.expires_at = new_offset, expires_at
        if digest is not None:
            running_hash.keep(**identity, offset=new_offset, digest=digest)
    return False


def _staged_elsewhere(attachment: Attachment) -> DomainError:
    """This host cannot see the upload's staged file: host-local staging behind a balancer
    that is not sticky (or a shared volume that is not mounted here). Nothing is written."""
    logger.warning(
        "tus upload %s is staged on host %r, not here", attachment.pk, attachment.staging_host
    )
    return DomainError(
        "upload_staged_elsewhere",
        "This upload's bytes are staged on another host; retry (the balancer should send "
        "the upload's requests to one host, or the hosts should share their staging folder).",
        kind=ErrorKind.UNAVAILABLE,
        # no host name in the answer: browsers (publishable keys) see it; the log has it
    )


def _peek(read: Callable[[int], bytes]) -> bytes:
    try:
        return read(1)
    except Exception:
        return b""


def _flush_durably(fh: IO[bytes]) -> None:
    fh.flush()
    os.fsync(fh.fileno())


def _tus_complete(attachment: Attachment, *, sha256: str) -> None:
    """All bytes are staged and fsync'd: check the announced SHA-256, then one UPDATE makes
    the upload pending with its digest and the inline finalising's claim. Once committed the
    bytes are acknowledged; a crash from here on leaves a pending row that the retry runs
    take once the claim's lease (UPLOADS_RETRY_LEASE_SECONDS) has run out."""
    running_hash.forget(upload_id=attachment.pk, created_at=attachment.created_at)
    path = staging.staging_path(tenant_id=attachment.tenant_id, attachment_id=attachment.pk)
    if attachment.expected_sha256 and attachment.expected_sha256 != sha256:
        Attachment.objects.filter(pk=attachment.pk).delete()
        staging.remove_quietly(path)
        raise DomainError(
            "checksum_mismatch",
            "The file's SHA-256 is not the one announced; nothing was kept.",
            kind=ErrorKind.CHECKSUM_MISMATCH,
            details={"expected": attachment.expected_sha256, "received": sha256},
        )
    now = timezone.now()
    claim = inline_claim(now)
    fields = {
        "status": Status.PENDING,
        "upload_offset": attachment.size,
        "sha256": sha256,
        "expires_at": None,
        "next_retry_at": now,
        "updated_at": now,
        **claim,
    }
    if rows.update(
        attachment.pk,
        where={"status": Status.RECEIVING, "upload_offset": attachment.upload_offset},
        **fields,
    ):
        for name, value in fields.items():
            setattr(attachment, name, value)


def _finalise_inline(attachment: Attachment) -> None:
    claimed = attachment.status == Status.PENDING and attachment.claimed_by is not None
    if claimed and attachment_finalise(
        attachment_id=attachment.pk, source=RetrySource.UPLOAD, claimed=attachment
    ):
        attachment.status = Status.STORED


def tus_upload_terminate(*, tenant_id, upload_id) -> None:
    """tus termination: an unfinished upload and its bytes are removed. A finished one is
    kept (409 upload_complete): files that reached us are never lost by a client call."""
    with UploadLock(upload_id):
        attachment = tenant_get_or_404(Attachment, tenant_id=tenant_id, pk=upload_id)
        if attachment.status != Status.RECEIVING:
            raise DomainError(
                "upload_complete",
                "This upload is complete and cannot be terminated.",
                kind=ErrorKind.CONFLICT,
                details={"status": attachment.status},
            )
        deleted, _ = Attachment.objects.filter(pk=upload_id, status=Status.RECEIVING).delete()
        if deleted:
            running_hash.forget(upload_id=attachment.pk, created_at=attachment.created_at)
            staging.remove_quietly(
                staging.staging_path(tenant_id=tenant_id, attachment_id=upload_id)
            )


def uploads_expired_cleanup(*, now: datetime | None = None) -> int:
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
