"""`Authorization: Bearer <key>` authentication for the API."""

from __future__ import annotations

from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header

from core.errors import DomainError
from core.logging import log_context
from tenants.services import apikey_authenticate
from tenants.throttles import IpRateThrottle


def _throttle_anonymous(request):
    """DRF checks throttles after permissions, so a request without a valid key would never
    be counted: count it here against the per-IP limit."""
    throttle = IpRateThrottle()
    if not throttle.allow_request(request, None):
        raise exceptions.Throttled(wait=throttle.wait())


class ApiKeyAuthentication(BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request):
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
        log_context.set({**(log_context.get() or {}), "tenant_id": principal.tenant_id})
        return principal, principal

    def authenticate_header(self, request):
        return 'Bearer realm="api"'
