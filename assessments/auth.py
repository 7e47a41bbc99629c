"""Browser authentication for the assessment endpoints.

sendBeacon cannot set headers, so a beacon carries its publishable key as `?key=pk_…`. Only
publishable keys (public by design, still bound to their allowed origins) are taken from the
URL; a secret key in a URL is refused with 400 secret_key_in_url (tenants.auth). The session
token a publishable-key request presents is read here too (assessments.session_tokens).
"""

from core import session_proof as session_tokens
from core.session_proof import SessionProof
from tenants.auth import ApiKeyAuthentication


class BeaconKeyAuthentication(ApiKeyAuthentication):
    def authenticate(self, request):
        django_request = request._request
        if not django_request.META.get("HTTP_AUTHORIZATION"):
            key = request.query_params.get("key", "")
            if key.startswith("pk_"):
                # Reuse the header path so origin checks, caching and throttles stay identical.
                django_request.META["HTTP_AUTHORIZATION"] = f"Bearer {key}"
                # request.headers is a cached view of META built by earlier middleware.
                django_request.__dict__.pop("headers", None)
        return super().authenticate(request)


def session_proof(request, *, beacon_body: bool = False) -> SessionProof | None:
    """What a publishable-key request presents for its session (None for a secret key: trusted).

    The token comes from the X-Session-Token header; a beacon (text/plain: sendBeacon cannot
    set headers) may carry it as the body field `sessionToken` when `beacon_body` allows.
    """
    if request.auth.is_secret:
        return None
    token = request.headers.get(session_tokens.HEADER)
    if not token and beacon_body and request.content_type.startswith("text/plain"):
        data = request.data
        candidate = data.get(session_tokens.BODY_FIELD) if isinstance(data, dict) else None
        token = candidate if isinstance(candidate, str) else None
    return SessionProof(token or None)
