"""The tus 1.0 server: creation, HEAD, PATCH, termination and OPTIONS discovery.

The tus views never touch request.body: PATCH bodies are read from the WSGI input in 256 KiB
chunks and written straight to the staged file, so memory stays flat for any file size.
Services raise DomainError; `TUS_STATUS_BY_KIND` is the one place that says which tus status
each kind becomes.
"""

from __future__ import annotations

import base64
import binascii
import uuid

from django.conf import settings
from django.http import HttpResponse
from django.urls import reverse
from django.utils.http import http_date
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.views import APIView

from core.api.errors import HTTP_STATUS_BY_KIND, ApiError
from core.errors import ErrorKind
from core.session_proof import proof_from_headers
from tenants.permissions import HasAnyKey
from uploads.api import SHA256_RE, UploadsErrorMixin, is_publishable
from uploads.models import Attachment
from uploads.services.tus import (
    CHECKSUM_ALGORITHMS,
    tus_upload_append,
    tus_upload_create,
    tus_upload_get,
    tus_upload_terminate,
)

TUS_VERSION = "1.0.0"
TUS_EXTENSIONS = "creation,creation-with-upload,checksum,expiration,termination"

# tus 1.0 statuses for the services' refusals; other kinds answer as anywhere in the API.
TUS_STATUS_BY_KIND: dict[ErrorKind, int] = {
    **HTTP_STATUS_BY_KIND,
    ErrorKind.CONFLICT: 409,  # offset_mismatch, upload_exists, upload_complete
    ErrorKind.GONE: 410,  # upload_expired
    ErrorKind.TOO_LARGE: 413,  # file_too_large, upload_length_exceeded, quota_exceeded
    ErrorKind.LOCKED: 423,  # upload_locked: another request is writing
    ErrorKind.CHECKSUM_MISMATCH: 460,  # the checksum extension's own status
}


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


class _TusView(UploadsErrorMixin, APIView):
    """Shared tus plumbing: version check (412), X-HTTP-Method-Override, Tus-Resumable on every
    response, and error bodies in the one JSON error shape with tus status codes."""

    status_by_kind = TUS_STATUS_BY_KIND
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
        response["Tus-Checksum-Algorithm"] = ",".join(sorted(CHECKSUM_ALGORITHMS))
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
        checksum = parse_checksum_header(request.headers.get("Upload-Checksum"))
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
        return tus_upload_append(
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
        attachment, _created = tus_upload_create(
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
            publishable=is_publishable(request),
            session_proof=proof_from_headers(request.headers, is_secret=request.auth.is_secret),
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
        attachment = tus_upload_get(tenant_id=request.tenant_id, upload_id=attachment_id)
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
        tus_upload_terminate(tenant_id=request.tenant_id, upload_id=attachment_id)
        return HttpResponse(status=204)
