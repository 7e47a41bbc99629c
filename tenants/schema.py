"""Teaches drf-spectacular about Bearer API keys (imported by TenantsConfig.ready)."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "tenants.auth.ApiKeyAuthentication"
    name = "ApiKey"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": (
                "`Authorization: Bearer <key>`. Publishable keys (pk_…) reach the browser "
                "endpoints from their allowed origins; secret keys (sk_…) reach everything "
                "of their tenant."
            ),
        }
