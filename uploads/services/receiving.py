"""Receiving: the checks every upload passes (size, content type, session), and the simple
multipart upload, whose bytes are already staged when it reaches us (quotas: `quotas`)."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from core.errors import DomainError, ErrorKind
from core.session_proof import SessionProof, session_link_check
from tenants.scoping import tenant_queryset
from uploads import staging
from uploads.models import Attachment, RetrySource
from uploads.services.finalising import attachment_finalise
from uploads.services.quotas import quota_reserve, upload_max_bytes

Status = Attachment.Status


def check_limits(*, size: int, content_type: str, publishable: bool = False) -> None:
    """The per-upload rules; publishable keys get the tighter UPLOADS_PUBLISHABLE_MAX_BYTES."""
    max_bytes = upload_max_bytes(publishable=publishable)
    if size > max_bytes:
        raise DomainError(
            "file_too_large",
            f"Files may be at most {max_bytes} bytes.",
            kind=ErrorKind.TOO_LARGE,
            details={"maxBytes": max_bytes, "size": size},
        )
    if not staging.content_type_allowed(content_type):
        raise DomainError(
            "content_type_not_allowed",
            f"Content type {content_type!r} is not accepted.",
            kind=ErrorKind.UNSUPPORTED_MEDIA_TYPE,
            details={"allowed": list(settings.UPLOADS_ALLOWED_CONTENT_TYPES)},
        )


def check_session(
    *, tenant_id, assessment_session_id, session_proof: SessionProof | None = None
) -> None:
    """The session an upload belongs to must be the tenant's own, and a publishable key must
    present that session's token (session_proof; None for a secret key). The model comes
    through the foreign key: uploads does not import the assessments app."""
    if assessment_session_id is None:
        return
    session_model = Attachment._meta.get_field("assessment_session").related_model
    session_link_check(
        tenant_queryset(session_model, tenant_id=tenant_id),
        session_id=assessment_session_id,
        proof=session_proof,
        missing=DomainError(
            "unknown_assessment_session",
            "No such assessment session.",
            kind=ErrorKind.INVALID,
            details={"assessmentSessionId": str(assessment_session_id)},
        ),
    )


def clean_filename(name: str) -> str:
    name = (name or "").replace("\\", "/").split("/")[-1].strip().replace("\x00", "")
    return (name or "upload")[:255]


def attachment_receive(
    *,
    tenant_id,
    upload_id: uuid.UUID,
    staged: staging.StagedFile,
    expected_sha256: str = "",
    assessment_session_id=None,
    publishable: bool = False,
    session_proof: SessionProof | None = None,
) -> tuple[Attachment, bool]:
    """Take a fully staged multipart file. Returns (attachment, created).

    The same uploadId with the same bytes returns the existing attachment (created=False);
    different bytes → 409. A checksum mismatch keeps nothing. The staged temp file is always
    either moved under the attachment or removed. A new attachment takes its room in the
    tenant's quota in the transaction that inserts it.
    """
    try:
        check_limits(size=staged.size, content_type=staged.content_type, publishable=publishable)
        if expected_sha256 and expected_sha256.lower() != staged.sha256:
            raise DomainError(
                "checksum_mismatch",
                "The file's SHA-256 is not the one you sent; nothing was kept.",
                kind=ErrorKind.CHECKSUM_MISMATCH,
                details={"expected": expected_sha256.lower(), "received": staged.sha256},
            )
        check_session(
            tenant_id=tenant_id,
            assessment_session_id=assessment_session_id,
            session_proof=session_proof,
        )
        existing = _existing_same_bytes(tenant_id=tenant_id, upload_id=upload_id, staged=staged)
        if existing is not None:
            return existing, False
        now = timezone.now()
        target = staging.staging_path(tenant_id=tenant_id, attachment_id=upload_id)
        try:
            with transaction.atomic():
                quota_reserve(tenant_id=tenant_id, size=staged.size, opens_upload=False)
                attachment = Attachment.objects.create(
                    id=upload_id,
                    tenant_id=tenant_id,
                    assessment_session_id=assessment_session_id,
                    channel=Attachment.Channel.MULTIPART,
                    filename=clean_filename(staged.name),
                    content_type=staged.content_type[:255],
                    size=staged.size,
                    upload_offset=staged.size,
                    sha256=staged.sha256,
                    expected_sha256=(expected_sha256 or "").lower(),
                    status=Status.PENDING,
                    next_retry_at=now,
                    staging_host=settings.ATLAS_HOST_NAME,
                )
                staging.move_durably(staged.path, target)
        except (IntegrityError, DomainError) as exc:
            # A concurrent request with the same uploadId won the insert (and maybe the last
            # room in the quota): the replay answers like one that came after it.
            existing = _existing_same_bytes(tenant_id=tenant_id, upload_id=upload_id, staged=staged)
            if existing is not None:
                return existing, False
            if isinstance(exc, DomainError):
                raise
            raise _conflict(upload_id) from None
    finally:
        staging.remove_quietly(staged.path)
    attachment_finalise(attachment_id=attachment.pk, source=RetrySource.UPLOAD)
    attachment.refresh_from_db()
    return attachment, True


def _conflict(upload_id) -> DomainError:
    return DomainError(
        "upload_id_conflict",
        "This uploadId was used for different bytes.",
        kind=ErrorKind.CONFLICT,
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
