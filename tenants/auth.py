"""`Authorization: Bearer <key>` authentication for the API."""

from __future__ import annotations

from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header

from core.api.errors import ApiError
from core.errors import DomainError
from core.logging import log_context
from tenants import rls
from tenants.services import apikey_authenticate
from tenants.throttles import IpRateThrottle


def _throttle_anonymous(request):
    """DRF checks throttles after permissions, so a request without a valid key would never
    be counted: count it here against the per-IP limit."""
    throttle = IpRateThrottle()
    if not throttle.allow_request(request, None):
        raise exceptions.Throttled(wait=throttle.wait())


def refuse_secret_key_in_url(request) -> None:
    """A secret key in a URL ends up in access logs, proxies and browser history: refuse it
    (400 secret_key_in_url) under any parameter name, whatever else authenticates."""
    for name, values in request.query_params.lists():
        if any(value.startswith("sk_") for value in values):
            raise ApiError(
                "secret_key_in_url",
                "Secret keys never go in a URL: send 'Authorization: Bearer <key>' and "
                "revoke this key, it may be in logs already.",
                details={"parameter": name},
            )


class ApiKeyAuthentication(BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request):
        if request.META.get("QUERY_STRING"):
            refuse_secret_key_in_url(request)
        header = get_authorization_header(request).decode("latin-1").strip()
        if not header:
            _throttle_anonymous(request)
            return None  # the permission class answers 401 authentication_required
        parts = header.split()
        if len(parts) != 2 or parts[0].lower() != "bearer":
            raise exceptions.AuthenticationFailed(
                "Use 'Authorization: Bearer <key>'.", code="malformed_authorization_header"
            )
        raw_key = parts[1]
        if not (raw_key.startswith("pk_") or raw_key.startswith("sk_")) or len(raw_key) > 200:
            raise exceptions.AuthenticationFailed(
                "The API key is not valid.", code="invalid_api_key"
            )
        try:
            principal = apikey_authenticate(raw_key=raw_key)
        except DomainError as exc:
            _throttle_anonymous(request)  # key guessing is limited per IP
            raise exceptions.AuthenticationFailed(exc.message, code=exc.code) from exc
        if principal.kind == "publishable":
            origin = request.headers.get("Origin")
            if origin and origin.rstrip("/").lower() not in principal.allowed_origins:
                raise exceptions.PermissionDenied(
                    f"Origin {origin} may not use this key.", code="origin_not_allowed"
                )
        request.tenant_id = principal.tenant_id
        request.api_key = principal
        # The second wall: from here on PostgreSQL shows this request only its tenant's rows.
        rls.enter_tenant_scope(principal.tenant_id)
        log_context.set({**(log_context.get() or {}), "tenant_id": principal.tenant_id})
        return principal, principal

    def authenticate_header(self, request):
        return 'Bearer realm="api"'
