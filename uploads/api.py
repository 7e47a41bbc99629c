"""Uploads API: multipart upload, status and client-sync retry (the tus server is in
uploads.tus_views).

Services raise DomainError; `UploadsErrorMixin` turns it into the one JSON error shape with
the HTTP status its kind says (and the few statuses a kind cannot say).
"""

from __future__ import annotations

import re
import uuid

from django.conf import settings
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.parsers import MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from core.api.errors import HTTP_STATUS_BY_KIND, ApiError
from core.errors import DomainError, ErrorKind
from core.session_proof import proof_from_headers
from tenants.permissions import HasAnyKey
from uploads import selectors, staging
from uploads.models import Attachment, RetrySource
from uploads.services.quotas import staging_space_check, upload_max_bytes
from uploads.services.receiving import attachment_receive
from uploads.services.retries import retry_run

SHA256_RE = re.compile(r"^[0-9a-fA-F]{64}$")
# A client-sync run happens inside the request: it takes at most this many attachments, the
# rest waits for the next sync or the 10-minute schedule.
CLIENT_SYNC_LIMIT = 10
# What a multipart body may carry besides the file (boundaries, part headers, small fields).
MULTIPART_OVERHEAD = 64 * 1024


def is_publishable(request) -> bool:
    """The request came with the public browser key (pk_), which gets tighter limits."""
    return not getattr(request.auth, "is_secret", False)


class UploadsErrorMixin:
    """Turns a service's DomainError into an ApiError with the status for its kind; views
    with their own protocol (tus) set `status_by_kind`."""

    status_by_kind: dict[ErrorKind, int] = HTTP_STATUS_BY_KIND

    def handle_exception(self, exc):
        if isinstance(exc, DomainError):
            status_code = self.status_by_kind[exc.kind]
            exc = ApiError(exc.code, exc.message, status_code=status_code, details=exc.details)
        return super().handle_exception(exc)


class AttachmentOutSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    status = serializers.CharField()
    channel = serializers.CharField()
    filename = serializers.CharField()
    contentType = serializers.CharField(source="content_type")
    size = serializers.IntegerField()
    sha256 = serializers.CharField()
    uploadOffset = serializers.IntegerField(source="upload_offset")
    attempts = serializers.IntegerField()
    nextRetryAt = serializers.DateTimeField(source="next_retry_at", allow_null=True)
    lastError = serializers.CharField(source="last_error")
    assessmentSessionId = serializers.UUIDField(source="assessment_session_id", allow_null=True)
    createdAt = serializers.DateTimeField(source="created_at")
    storedAt = serializers.DateTimeField(source="stored_at", allow_null=True)


def _out(attachment: Attachment) -> dict:
    return AttachmentOutSerializer(attachment).data


class UploadInSerializer(serializers.Serializer):
    uploadId = serializers.UUIDField(required=False, help_text="Client-generated id (idempotent).")
    sha256 = serializers.RegexField(SHA256_RE, required=False, allow_blank=True)
    assessmentSessionId = serializers.UUIDField(required=False, allow_null=True)


class UploadCreateView(UploadsErrorMixin, APIView):
    permission_classes = [HasAnyKey]
    parser_classes = [MultiPartParser]

    @extend_schema(
        tags=["uploads"],
        summary="Upload a small file (multipart)",
        request={
            "multipart/form-data": inline_serializer(
                "UploadForm",
                {
                    "file": serializers.FileField(),
                    "uploadId": serializers.UUIDField(required=False),
                    "sha256": serializers.CharField(required=False),
                    "assessmentSessionId": serializers.UUIDField(required=False),
                },
            )
        },
        responses={201: AttachmentOutSerializer, 200: AttachmentOutSerializer},
        description=(
            "Streams the file into the staging area, verifies the optional `sha256`, and "
            "finalises it into storage. 201: new (status `stored`, or `pending` when storage "
            "is down — it is retried). 200: the same `uploadId` with the same bytes again. "
            "409 `upload_id_conflict`: that uploadId has different bytes. 400 "
            "`checksum_mismatch`: nothing kept. 413 `file_too_large` (publishable keys: "
            "`UPLOADS_PUBLISHABLE_MAX_BYTES`) or `quota_exceeded` (the tenant's "
            "`UPLOADS_TENANT_QUOTA_BYTES`), 415 `content_type_not_allowed`, 507 "
            "`insufficient_storage` (the staging disk is short of space)."
        ),
    )
    def post(self, request):
        publishable = is_publishable(request)
        max_bytes = upload_max_bytes(publishable=publishable)
        content_length = int(request.META.get("CONTENT_LENGTH") or 0)
        if content_length > max_bytes + MULTIPART_OVERHEAD:
            raise _too_large(max_bytes)
        # The disk is checked before a byte is read. The quota is checked once the file is
        # staged (the uploadId in the body may be an idempotent replay, which takes no room).
        staging_space_check(size=content_length)
        handler = staging.StagingUploadHandler(request._request, max_bytes=max_bytes)
        request._request.upload_handlers = [handler]
        try:
            files = request.FILES
            if handler.too_large:
                raise _too_large(max_bytes)
            if handler.type_refused is not None:
                raise ApiError(
                    "content_type_not_allowed",
                    f"Content type {handler.type_refused!r} is not accepted.",
                    status_code=415,
                    details={"allowed": list(settings.UPLOADS_ALLOWED_CONTENT_TYPES)},
                )
            staged = files.get("file")
            if not isinstance(staged, staging.StagedFile):
                raise ApiError("file_required", "Send the file in the multipart field 'file'.")
            form = UploadInSerializer(data=request.POST)
            form.is_valid(raise_exception=True)
            attachment, created = attachment_receive(
                tenant_id=request.tenant_id,
                upload_id=form.validated_data.get("uploadId") or uuid.uuid4(),
                staged=staged,
                expected_sha256=form.validated_data.get("sha256") or "",
                assessment_session_id=form.validated_data.get("assessmentSessionId"),
                publishable=publishable,
                session_proof=proof_from_headers(request.headers, is_secret=request.auth.is_secret),
            )
        finally:
            handler.cleanup()
        return Response(
            _out(attachment), status=status.HTTP_201_CREATED if created else status.HTTP_200_OK
        )


def _too_large(max_bytes: int) -> ApiError:
    return ApiError(
        "file_too_large",
        f"Files may be at most {max_bytes} bytes.",
        status_code=413,
        details={"maxBytes": max_bytes},
    )


class UploadDetailView(UploadsErrorMixin, APIView):
    permission_classes = [HasAnyKey]

    @extend_schema(
        tags=["uploads"], summary="An upload's status", responses=AttachmentOutSerializer
    )
    def get(self, request, attachment_id):
        attachment = selectors.attachment_get(
            tenant_id=request.tenant_id, attachment_id=attachment_id
        )
        return Response(_out(attachment))


RetryRunSerializer = inline_serializer(
    "UploadRetryRun",
    {
        "runId": serializers.UUIDField(),
        "source": serializers.CharField(),
        "attempted": serializers.IntegerField(),
        "succeeded": serializers.IntegerField(),
        "failed": serializers.IntegerField(),
    },
)


class UploadRetryView(UploadsErrorMixin, APIView):
    permission_classes = [HasAnyKey]

    @extend_schema(
        tags=["uploads"],
        summary="The client is back online: retry this tenant's pending uploads now",
        request=None,
        responses=RetryRunSerializer,
    )
    def post(self, request):
        log = retry_run(
            source=RetrySource.CLIENT_SYNC, tenant_id=request.tenant_id, limit=CLIENT_SYNC_LIMIT
        )
        return Response(
            {
                "runId": str(log.pk),
                "source": log.source,
                "attempted": log.attempted,
                "succeeded": log.succeeded,
                "failed": log.failed,
            }
        )
