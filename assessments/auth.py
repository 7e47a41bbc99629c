"""sendBeacon cannot set headers, so a beacon carries its publishable key as `?key=pk_…`.

Only publishable keys (public by design, still bound to their allowed origins) are taken
from the URL; a secret key in a URL would end up in access logs, so it is ignored.
"""

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
