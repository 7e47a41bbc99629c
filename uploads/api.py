"""Uploads API: multipart upload, status, client-sync retry, and a tus 1.0 server.

The tus views never touch request.body: PATCH bodies are read from the WSGI input in 64 KiB
chunks and written straight to the staged file, so memory stays flat for any file size.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid

from django.conf import settings
from django.http import HttpResponse
from django.urls import reverse
from django.utils.http import http_date
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    inline_serializer,
)
from rest_framework import serializers, status
from rest_framework.parsers import MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from core.api.errors import ApiError
from tenants.permissions import HasAnyKey
from uploads import selectors, services, staging
from uploads.models import Attachment, RetrySource

TUS_VERSION = "1.0.0"
TUS_EXTENSIONS = "creation,creation-with-upload,checksum,expiration,termination"
SHA256_RE = re.compile(r"^[0-9a-fA-F]{64}$")
# A client-sync run happens inside the request: it takes at most this many attachments, the
# rest waits for the next sync or the 10-minute schedule.
CLIENT_SYNC_LIMIT = 10


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


class UploadCreateView(APIView):
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
            "`checksum_mismatch`: nothing kept. 413 `file_too_large`, 415 "
            "`content_type_not_allowed`."
        ),
    )
    def post(self, request):
        content_length = int(request.META.get("CONTENT_LENGTH") or 0)
        if content_length > settings.UPLOADS_MAX_BYTES + 64 * 1024:  # multipart overhead
            raise _too_large(content_length)
        handler = staging.StagingUploadHandler(request._request)
        request._request.upload_handlers = [handler]
        try:
            files = request.FILES
            if handler.too_large:
                raise _too_large(None)
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
            attachment, created = services.attachment_receive(
                tenant_id=request.tenant_id,
                upload_id=form.validated_data.get("uploadId") or uuid.uuid4(),
                staged=staged,
                expected_sha256=form.validated_data.get("sha256") or "",
                assessment_session_id=form.validated_data.get("assessmentSessionId"),
            )
        finally:
            handler.cleanup()
        return Response(
            _out(attachment), status=status.HTTP_201_CREATED if created else status.HTTP_200_OK
        )


def _too_large(size) -> ApiError:
    return ApiError(
        "file_too_large",
        f"Files may be at most {settings.UPLOADS_MAX_BYTES} bytes.",
        status_code=413,
        details={"maxBytes": settings.UPLOADS_MAX_BYTES},
    )


class UploadDetailView(APIView):
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


class UploadRetryView(APIView):
    permission_classes = [HasAnyKey]

    @extend_schema(
        tags=["uploads"],
        summary="The client is back online: retry this tenant's pending uploads now",
        request=None,
        responses=RetryRunSerializer,
    )
    def post(self, request):
        log = services.retry_run(
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


# --- tus 1.0 --------------------------------------------------------------------------------


MAX_METADATA_CHARS = 4096


def parse_metadata(header: str | None) -> dict[str, str]:
    """`Upload-Metadata: key base64,key2 base64,flag` → {key: value}."""
    result: dict[str, str] = {}
    if not header:
        return result
    if len(header) > MAX_METADATA_CHARS:
        raise ApiError(
            "invalid_upload_metadata", f"Upload-Metadata is longer than {MAX_METADATA_CHARS}."
        )
    for pair in header.split(","):
        pair = pair.strip()
        if not pair:
            continue
        parts = pair.split(" ")
        if len(parts) > 2 or not parts[0]:
            raise ApiError("invalid_upload_metadata", f"Bad Upload-Metadata pair {pair!r}.")
        try:
            value = base64.b64decode(parts[1], validate=True).decode() if len(parts) == 2 else ""
        except (binascii.Error, ValueError, UnicodeDecodeError):
            raise ApiError(
                "invalid_upload_metadata",
                f"The value of {parts[0]!r} in Upload-Metadata is not base64 (UTF-8).",
            ) from None
        result[parts[0]] = value
    return result


def _int_header(request, name: str, code: str) -> int | None:
    raw = request.headers.get(name)
    if raw is None:
        return None
    if not raw.isdigit():
        raise ApiError(code, f"{name} must be a non-negative integer.")
    return int(raw)


def _uuid_or_none(value: str | None, code: str):
    if not value:
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        raise ApiError(code, f"{value!r} is not a UUID.") from None


class _TusView(APIView):
    """Shared tus plumbing: version check (412), X-HTTP-Method-Override, Tus-Resumable on every
    response, and error bodies in the one JSON error shape with tus status codes."""

    permission_classes = [HasAnyKey]
    parser_classes: list = []

    def dispatch(self, request, *args, **kwargs):
        override = request.headers.get("X-HTTP-Method-Override")
        if override and request.method == "POST":
            request.method = override.upper()
        return super().dispatch(request, *args, **kwargs)

    def get_permissions(self):
        if self.request.method == "OPTIONS":
            return []  # discovery needs no key
        return super().get_permissions()

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        if request.method != "OPTIONS" and request.headers.get("Tus-Resumable") != TUS_VERSION:
            raise ApiError(
                "unsupported_tus_version",
                f"This server speaks tus {TUS_VERSION}; send 'Tus-Resumable: {TUS_VERSION}'.",
                status_code=412,
            )

    def finalize_response(self, request, response, *args, **kwargs):
        response = super().finalize_response(request, response, *args, **kwargs)
        response["Tus-Resumable"] = TUS_VERSION
        if response.status_code == 412:
            response["Tus-Version"] = TUS_VERSION
        if response.status_code == 460:
            response.reason_phrase = "Checksum Mismatch"
        if request.method == "HEAD" and response.status_code >= 400:
            bare = HttpResponse(status=response.status_code)
            for header, value in response.items():
                if header.lower() not in {"content-type", "content-length"}:
                    bare[header] = value
            bare["Cache-Control"] = "no-store"
            return bare
        return response

    def options(self, request, *args, **kwargs):
        response = HttpResponse(status=204)
        response["Tus-Version"] = TUS_VERSION
        response["Tus-Extension"] = TUS_EXTENSIONS
        response["Tus-Max-Size"] = str(settings.UPLOADS_MAX_BYTES)
        response["Tus-Checksum-Algorithm"] = ",".join(sorted(services.CHECKSUM_ALGORITHMS))
        return response

    def _location(self, request, attachment) -> str:
        return request.build_absolute_uri(reverse("uploads-tus-upload", args=[attachment.pk]))

    def _upload_headers(self, response, attachment: Attachment):
        response["Upload-Offset"] = str(attachment.upload_offset)
        if attachment.status == Attachment.Status.RECEIVING and attachment.expires_at:
            response["Upload-Expires"] = http_date(attachment.expires_at.timestamp())
        return response

    def _append(self, request, attachment_id, offset: int):
        django_request = request._request
        if (
            request.headers.get("Content-Type", "").split(";")[0].strip()
            != "application/offset+octet-stream"
        ):
            raise ApiError(
                "invalid_content_type",
                "PATCH bodies must be 'Content-Type: application/offset+octet-stream'.",
                status_code=415,
            )
        checksum = services.parse_checksum_header(request.headers.get("Upload-Checksum"))
        raw_length = request.META.get("CONTENT_LENGTH")
        if raw_length not in (None, ""):
            if not str(raw_length).isdigit():
                raise ApiError("invalid_content_length", "Content-Length is not a number.")
            content_length: int | None = int(raw_length)
            read = django_request.read
        elif request.META.get("wsgi.input_terminated"):  # chunked, decoded by the server
            content_length = None
            read = request.META["wsgi.input"].read
        else:
            raise ApiError("length_required", "Send Content-Length.", status_code=411)
        return services.tus_upload_append(
            tenant_id=request.tenant_id,
            upload_id=attachment_id,
            offset=offset,
            read=read,
            content_length=content_length,
            checksum=checksum,
        )


# tus statuses (tus 1.0): bodies still use the one error shape.
TUS_ERRORS = {
    410: OpenApiResponse(description="Upload expired (upload_expired)"),
    412: OpenApiResponse(description="Tus-Resumable missing or not 1.0.0"),
    423: OpenApiResponse(description="Another request is writing this upload"),
    460: OpenApiResponse(description="Upload-Checksum mismatch (checksum_mismatch)"),
}


class TusCreateView(_TusView):
    @extend_schema(
        tags=["uploads"],
        summary="tus creation (Upload-Length, Upload-Metadata: filename, filetype, uploadId, "
        "sha256, assessmentSessionId)",
        request=None,
        responses={201: None, **TUS_ERRORS},
        parameters=[
            OpenApiParameter("Tus-Resumable", str, OpenApiParameter.HEADER, required=True),
            OpenApiParameter("Upload-Length", int, OpenApiParameter.HEADER, required=True),
            OpenApiParameter("Upload-Metadata", str, OpenApiParameter.HEADER),
        ],
    )
    def post(self, request):
        if request.headers.get("Upload-Defer-Length") is not None:
            raise ApiError(
                "defer_length_not_supported", "Send Upload-Length; deferring it is not supported."
            )
        length = _int_header(request, "Upload-Length", "invalid_upload_length")
        if length is None:
            raise ApiError("upload_length_required", "Send Upload-Length.")
        metadata = parse_metadata(request.headers.get("Upload-Metadata"))
        expected = metadata.get("sha256", "")
        if expected and not SHA256_RE.match(expected):
            raise ApiError("invalid_sha256", "metadata sha256 must be 64 hex characters.")
        attachment, _created = services.tus_upload_create(
            tenant_id=request.tenant_id,
            upload_id=_uuid_or_none(metadata.get("uploadId"), "invalid_upload_id") or uuid.uuid4(),
            length=length,
            filename=metadata.get("filename") or metadata.get("name") or "upload",
            content_type=metadata.get("filetype")
            or metadata.get("contentType")
            or metadata.get("type")
            or "application/octet-stream",
            expected_sha256=expected,
            assessment_session_id=_uuid_or_none(
                metadata.get("assessmentSessionId"), "invalid_assessment_session_id"
            ),
            raw_metadata=(request.headers.get("Upload-Metadata") or "").strip(),
        )
        has_body = request.headers.get("Content-Type", "").startswith(
            "application/offset+octet-stream"
        )
        if has_body and attachment.status == Attachment.Status.RECEIVING:  # creation-with-upload
            attachment = self._append(request, attachment.pk, attachment.upload_offset)
        response = HttpResponse(status=201)
        response["Location"] = self._location(request, attachment)
        return self._upload_headers(response, attachment)


class TusUploadView(_TusView):
    @extend_schema(
        tags=["uploads"], summary="tus: current offset", responses={200: None, **TUS_ERRORS}
    )
    def head(self, request, attachment_id):
        attachment = services.tus_upload_get(tenant_id=request.tenant_id, upload_id=attachment_id)
        response = HttpResponse(status=200)
        response["Upload-Length"] = str(attachment.size)
        response["Cache-Control"] = "no-store"
        if attachment.tus_metadata:
            response["Upload-Metadata"] = attachment.tus_metadata
        return self._upload_headers(response, attachment)

    @extend_schema(
        tags=["uploads"],
        summary="tus: append bytes",
        request=None,
        responses={204: None, **TUS_ERRORS},
    )
    def patch(self, request, attachment_id):
        offset = _int_header(request, "Upload-Offset", "invalid_upload_offset")
        if offset is None:
            raise ApiError("invalid_upload_offset", "Send Upload-Offset.")
        attachment = self._append(request, attachment_id, offset)
        return self._upload_headers(HttpResponse(status=204), attachment)

    @extend_schema(tags=["uploads"], summary="tus: terminate", responses={204: None, **TUS_ERRORS})
    def delete(self, request, attachment_id):
        services.tus_upload_terminate(tenant_id=request.tenant_id, upload_id=attachment_id)
        return HttpResponse(status=204)
