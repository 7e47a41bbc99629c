"""Every call to Stripe's API goes through here: the SDK client (timeout, retries, base URL),
the circuit breaker, and the mapping of Stripe's errors to our error codes.

A failed call leaves a StripeApiFailure row (visible in the admin) and raises DomainError.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TypeVar

import requests
import stripe
from django.conf import settings

from core.errors import DomainError, ErrorKind
from payments.circuit import (
    CircuitOpen,
    circuit_before_call,
    circuit_record_failure,
    circuit_record_success,
)
from payments.models import StripeApiFailure

logger = logging.getLogger(__name__)
T = TypeVar("T")

_clients: dict[tuple, stripe.StripeClient] = {}
_clients_lock = threading.Lock()


def stripe_client() -> stripe.StripeClient:
    """One client per configuration (settings may change in tests); the requests client keeps
    a connection pool per thread."""
    if not settings.STRIPE_SECRET_KEY:
        raise DomainError(
            "payments_not_configured",
            "Payments are not configured on this server (STRIPE_SECRET_KEY is empty).",
            kind=ErrorKind.UNAVAILABLE,
        )
    timeout = settings.STRIPE_TIMEOUT_SECONDS
    config = (
        settings.STRIPE_SECRET_KEY,
        settings.STRIPE_API_BASE,
        timeout,
        settings.STRIPE_MAX_NETWORK_RETRIES,
    )
    with _clients_lock:
        client = _clients.get(config)
        if client is None:
            client = stripe.StripeClient(
                settings.STRIPE_SECRET_KEY,
                base_addresses={"api": settings.STRIPE_API_BASE},
                # (connect, read) timeouts: a slow Stripe costs at most `timeout` per attempt.
                http_client=stripe.RequestsClient(timeout=(timeout, timeout)),
                max_network_retries=settings.STRIPE_MAX_NETWORK_RETRIES,
            )
            _clients[config] = client
    return client


def _is_timeout(exc: BaseException) -> bool:
    cause = exc.__cause__
    if isinstance(cause, requests.exceptions.Timeout):
        return True
    return "Timeout" in str(exc)


def _map_error(exc: Exception) -> tuple[DomainError, bool]:
    """(the error to raise, whether it counts as a Stripe outage for the breaker)."""
    if isinstance(exc, CircuitOpen):
        return (
            DomainError(
                "stripe_circuit_open",
                "Stripe has been failing; calls are paused briefly. Retry later.",
                kind=ErrorKind.UNAVAILABLE,
                details={"retryAfterSeconds": exc.retry_after_seconds},
            ),
            False,
        )
    stripe_details = {}
    if isinstance(exc, stripe.StripeError):
        error = getattr(exc, "error", None)
        stripe_details = {
            "stripeCode": exc.code or "",
            "stripeMessage": exc.user_message or "",
            "param": getattr(error, "param", None) or getattr(exc, "param", None) or "",
            "httpStatus": exc.http_status,
            "requestId": exc.request_id or "",
        }
    if isinstance(exc, stripe.CardError):
        return (
            DomainError(
                "stripe_card_error",
                "Stripe declined the card.",
                kind=ErrorKind.PAYMENT_REQUIRED,
                details=stripe_details,
            ),
            False,
        )
    if isinstance(exc, stripe.InvalidRequestError):
        return (
            DomainError(
                "stripe_invalid_request",
                f"Stripe refused the request: {exc.user_message or 'invalid request'}",
                kind=ErrorKind.INVALID,
                details=stripe_details,
            ),
            False,
        )
    if isinstance(exc, stripe.AuthenticationError | stripe.PermissionError):
        return (
            DomainError(
                "stripe_authentication_failed",
                "Stripe refused our credentials; an operator must fix STRIPE_SECRET_KEY.",
                kind=ErrorKind.UPSTREAM_FAILED,
                details=stripe_details,
            ),
            False,
        )
    if isinstance(exc, stripe.RateLimitError):
        return (
            # Stripe limits us, not the client: unavailable for now, not the client's 429
            DomainError(
                "stripe_rate_limited",
                "Stripe is rate limiting us; retry in a moment.",
                kind=ErrorKind.UNAVAILABLE,
                details=stripe_details,
            ),
            False,
        )
    if isinstance(exc, stripe.APIConnectionError):
        if _is_timeout(exc):
            return (
                DomainError(
                    "stripe_timeout",
                    f"Stripe did not answer within {settings.STRIPE_TIMEOUT_SECONDS:g} s.",
                    kind=ErrorKind.UPSTREAM_TIMEOUT,
                ),
                True,
            )
        return (
            DomainError(
                "stripe_unreachable",
                "Stripe could not be reached.",
                kind=ErrorKind.UPSTREAM_FAILED,
            ),
            True,
        )
    if isinstance(exc, stripe.StripeError):
        return (
            DomainError(
                "stripe_unavailable",
                "Stripe answered with an error; retry later.",
                kind=ErrorKind.UPSTREAM_FAILED,
                details=stripe_details,
            ),
            (exc.http_status or 500) >= 500,
        )
    raise exc


def stripe_call(
    operation: str,
    fn: Callable[[stripe.StripeClient], T],
    *,
    tenant_id=None,
    payment_session_id=None,
) -> T:
    """Run `fn(client)` through the circuit breaker; map failures to DomainError (recorded)."""
    client = stripe_client()
    try:
        circuit_before_call()
        result = fn(client)
    except (CircuitOpen, stripe.StripeError) as exc:
        error, outage = _map_error(exc)
        if outage:
            circuit_record_failure(f"{operation}: {error.code}: {exc}")
        elif not isinstance(exc, CircuitOpen):
            circuit_record_success()  # Stripe answered: it is up
        StripeApiFailure.objects.create(
            operation=operation,
            error_code=error.code,
            http_status=getattr(exc, "http_status", None),
            stripe_code=(getattr(exc, "code", None) or "")[:100],
            message=str(exc)[:4000],
            tenant_id=tenant_id,
            payment_session_id=payment_session_id,
        )
        logger.warning("stripe %s failed: %s (%s)", operation, error.code, exc)
        raise error from exc
    circuit_record_success()
    return result


def stripe_id(value) -> str | None:
    """Stripe fields can be an id or an expanded object: the id either way."""
    if isinstance(value, dict):
        return value.get("id")
    return value or None
