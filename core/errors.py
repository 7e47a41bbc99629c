"""Domain errors: what services raise when a rule is broken. They know nothing of HTTP.

Each carries a machine-readable `code`, a human `message`, optional `details` and a `kind`
saying what sort of refusal it is. Only the API edge (`core.api.errors`) turns a kind into an
HTTP status, and the tus views turn a few codes into tus status codes.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class ErrorKind(StrEnum):
    INVALID = "invalid"  # the input breaks a rule
    UNPROCESSABLE = "unprocessable"  # well-formed, but it contradicts what was said before
    PAYMENT_REQUIRED = "payment_required"  # the payment provider declined
    UNAUTHENTICATED = "unauthenticated"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"  # the current state does not allow it
    GONE = "gone"  # it existed, and never will again
    TOO_LARGE = "too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    LENGTH_REQUIRED = "length_required"
    PRECONDITION_FAILED = "precondition_failed"
    LOCKED = "locked"  # someone else holds it right now
    CHECKSUM_MISMATCH = "checksum_mismatch"
    RATE_LIMITED = "rate_limited"
    UPSTREAM_FAILED = "upstream_failed"  # a service we depend on answered badly
    UPSTREAM_TIMEOUT = "upstream_timeout"  # a service we depend on did not answer in time
    UNAVAILABLE = "unavailable"  # try again later
    INSUFFICIENT_STORAGE = "insufficient_storage"  # no room to keep it right now


class DomainError(Exception):
    """Raise from services for a refusal with our own machine-readable code."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        kind: ErrorKind = ErrorKind.INVALID,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.kind = kind
        self.details = details or {}

    def __str__(self) -> str:
        return self.message
