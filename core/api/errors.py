"""The one error shape: {"error": {"code": "...", "message": "...", "details": {...}}}.

Every API error goes through here: DRF exceptions, Django's Http404 / PermissionDenied /
RequestDataTooBig, the services' DomainError (its kind becomes the HTTP status here, the one
place that maps the domain to HTTP) and ApiError (raised by views for transport-level
refusals). Non-DRF paths (unknown URLs, crashes) reach the same shape through config.urls'
handler404 / handler500.
"""

from __future__ import annotations

import logging

from django import db
from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.http import Http404, JsonResponse
from rest_framework import exceptions, status

from core.errors import DomainError, ErrorKind

logger = logging.getLogger(__name__)


# The one mapping from a domain error's kind to an HTTP status.
HTTP_STATUS_BY_KIND: dict[ErrorKind, int] = {
    ErrorKind.INVALID: 400,
    ErrorKind.PAYMENT_REQUIRED: 402,
    ErrorKind.UNPROCESSABLE: 422,
    ErrorKind.UNAUTHENTICATED: 401,
    ErrorKind.FORBIDDEN: 403,
    ErrorKind.NOT_FOUND: 404,
    ErrorKind.CONFLICT: 409,
    ErrorKind.GONE: 410,
    ErrorKind.LENGTH_REQUIRED: 411,
    ErrorKind.PRECONDITION_FAILED: 412,
    ErrorKind.TOO_LARGE: 413,
    ErrorKind.UNSUPPORTED_MEDIA_TYPE: 415,
    ErrorKind.LOCKED: 423,
    ErrorKind.CHECKSUM_MISMATCH: 400,
    ErrorKind.RATE_LIMITED: 429,
    ErrorKind.UPSTREAM_FAILED: 502,
    ErrorKind.UPSTREAM_TIMEOUT: 504,
    ErrorKind.UNAVAILABLE: 503,
    ErrorKind.INSUFFICIENT_STORAGE: 507,
}


def http_status_for(error: DomainError) -> int:
    return HTTP_STATUS_BY_KIND[error.kind]


class ApiError(exceptions.APIException):
    """Raise from views for a 4xx with our own machine-readable code (services raise
    DomainError instead: they know nothing of HTTP)."""

    status_code: int = status.HTTP_400_BAD_REQUEST

    def __init__(self, code: str, message: str, *, status_code: int | None = None, details=None):
        super().__init__(detail=message, code=code)
        if status_code is not None:
            self.status_code = status_code
        self.error_code = code
        self.message = message
        self.details = details or {}


# DRF exception classes → our codes (the class's own default_code where it is clear enough).
_CODES = {
    exceptions.ParseError: "malformed_json",
    exceptions.UnsupportedMediaType: "unsupported_media_type",
    exceptions.MethodNotAllowed: "method_not_allowed",
    exceptions.NotAcceptable: "not_acceptable",
    exceptions.NotFound: "not_found",
    exceptions.Throttled: "rate_limited",
    exceptions.ValidationError: "validation_error",
    exceptions.PermissionDenied: "permission_denied",
    exceptions.NotAuthenticated: "authentication_required",
    exceptions.AuthenticationFailed: "invalid_api_key",
}


def error_body(code: str, message: str, details=None) -> dict:
    return {"error": {"code": code, "message": message, "details": details or {}}}


def error_response(code: str, message: str, status_code: int, details=None) -> JsonResponse:
    return JsonResponse(error_body(code, message, details), status=status_code)


def _code_for(exc: exceptions.APIException) -> str:
    if isinstance(exc, ApiError):
        return exc.error_code
    # Our auth/permission classes raise with a specific code (e.g. api_key_revoked).
    detail_code = getattr(exc.detail, "code", None)
    if isinstance(detail_code, str) and detail_code not in {
        "invalid",
        "error",
        "parse_error",
        "not_found",
        "permission_denied",
        "not_authenticated",
        "authentication_failed",
        "throttled",
        "method_not_allowed",
        "unsupported_media_type",
        "not_acceptable",
    }:
        return detail_code
    for cls in type(exc).__mro__:
        if cls in _CODES:
            return _CODES[cls]
    return "error"


def _message_for(exc: exceptions.APIException) -> str:
    if isinstance(exc, ApiError):
        return exc.message
    if isinstance(exc, exceptions.ValidationError):
        return "The request is not valid; see details for each field."
    if isinstance(exc, exceptions.ParseError):
        return f"The request body could not be parsed: {exc.detail}"
    return str(exc.detail)


def _validation_details(detail):
    """Flatten DRF's nested ErrorDetail lists into {field: [{"code", "message"}]}."""
    if isinstance(detail, dict):
        return {key: _validation_details(value) for key, value in detail.items()}
    if isinstance(detail, list):
        return [_validation_details(item) for item in detail]
    return {"code": getattr(detail, "code", "invalid"), "message": str(detail)}


def exception_handler(exc, context):
    if isinstance(exc, (db.OperationalError, db.InterfaceError)):
        # PostgreSQL unreachable or restarting: a retryable 503, not a 500
        logger.warning(
            "database unavailable: %s", str(exc).splitlines()[0][:200] if str(exc) else exc
        )
        response = error_response(
            "database_unavailable", "The database is unavailable; retry shortly.", 503
        )
        response["Retry-After"] = "5"
        return response
    if isinstance(exc, DomainError):
        exc = ApiError(exc.code, exc.message, status_code=http_status_for(exc), details=exc.details)
    if isinstance(exc, RequestDataTooBig):
        return error_response(
            "payload_too_large", "The request body is larger than this endpoint accepts.", 413
        )
    if isinstance(exc, Http404):
        exc = exceptions.NotFound("Not found.")
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()

    # Imported here: rest_framework.views imports the auth classes, which import this module.
    from rest_framework.views import exception_handler as drf_exception_handler

    response = drf_exception_handler(exc, context)
    if response is None:
        logger.exception("unhandled API error", exc_info=exc)
        return error_response("internal_error", "Something went wrong on our side.", 500)

    code = _code_for(exc)
    details = getattr(exc, "details", None) or {}
    if isinstance(exc, exceptions.ValidationError):
        # The first field error's code becomes the top code when a serializer set a specific one.
        details = {"fields": _validation_details(exc.detail)}
        specific = _first_specific_code(exc.detail)
        if specific:
            code = specific
    if isinstance(exc, exceptions.Throttled) and exc.wait is not None:
        details = {"retryAfterSeconds": int(exc.wait) + 1}
    response.data = error_body(code, _message_for(exc), details)
    return response


_drf_codes: set[str] | None = None


def _generic_field_codes() -> set[str]:
    """DRF's own field codes (required, invalid_choice, …): those stay 'validation_error'."""
    global _drf_codes
    if _drf_codes is None:
        import inspect

        from rest_framework import fields, relations, serializers

        codes = {"invalid", "unique"}
        for module in (fields, relations, serializers):
            for _name, cls in inspect.getmembers(module, inspect.isclass):
                codes.update(getattr(cls, "default_error_messages", {}) or {})
        _drf_codes = codes
    return _drf_codes


def _first_specific_code(detail) -> str | None:
    """A serializer can raise ValidationError(code="invalid_submission_id"): surface it."""
    items = detail.values() if isinstance(detail, dict) else detail
    if not isinstance(items, (list, tuple)) and not hasattr(items, "__iter__"):
        return None
    for item in items:
        if isinstance(item, (dict, list)):
            found = _first_specific_code(item)
            if found:
                return found
        else:
            code = getattr(item, "code", None)
            if code and code not in _generic_field_codes():
                return code
    return None
