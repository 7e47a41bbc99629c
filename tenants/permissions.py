"""Who may call what: secret keys everything of their tenant, publishable keys only the
browser endpoints (assessments, uploads, events), staff the operator endpoints."""

from rest_framework import exceptions
from rest_framework.permissions import BasePermission

from tenants import rls


def _principal(request):
    auth = getattr(request, "auth", None)
    return auth if getattr(auth, "tenant_id", None) else None


class _KeyRequired(BasePermission):
    def has_permission(self, request, view):
        if _principal(request) is None:
            raise exceptions.NotAuthenticated(
                "An API key is required: 'Authorization: Bearer <key>'.",
                code="authentication_required",
            )
        return True


class HasSecretKey(_KeyRequired):
    """The default: server-side endpoints."""

    def has_permission(self, request, view):
        super().has_permission(request, view)
        if not _principal(request).is_secret:
            raise exceptions.PermissionDenied(
                "This endpoint needs a secret key (sk_…); publishable keys are for browsers.",
                code="secret_key_required",
            )
        return True


class HasAnyKey(_KeyRequired):
    """Browser endpoints: a publishable or a secret key."""


class IsStaff(BasePermission):
    """Operator endpoints: a logged-in Django staff user (the admin session)."""

    def has_permission(self, request, view):
        user = getattr(request, "user", None)
        if not (user and getattr(user, "is_authenticated", False)):
            raise exceptions.NotAuthenticated(
                "Log in as staff to use this endpoint.", code="authentication_required"
            )
        if not getattr(user, "is_staff", False):
            raise exceptions.PermissionDenied("Staff only.", code="staff_required")
        # operators see every tenant (the request's scope ends with it: ScopeMiddleware)
        rls.enter_system_scope("staff on the API")
        return True
