"""Reads for tenants and API keys."""

from __future__ import annotations

import uuid

from django.core.exceptions import ObjectDoesNotExist

from tenants.models import ApiKey, Tenant


def tenant_get_by_name_or_id(*, ref: str) -> Tenant:
    """A tenant by its id or its exact name (commands accept either)."""
    try:
        return Tenant.objects.get(pk=uuid.UUID(str(ref)))
    except (ValueError, ObjectDoesNotExist):
        return Tenant.objects.get(name=ref)


def apikey_list(*, tenant: Tenant):
    return ApiKey.objects.filter(tenant=tenant).order_by("-created_at")


def apikey_get_by_prefix(*, prefix: str) -> ApiKey:
    # Accept the printed prefix or a whole key (its first two underscore-separated parts).
    parts = prefix.strip().split("_")
    return ApiKey.objects.get(prefix="_".join(parts[:2]))


def apikey_refusal(*, key_id: str) -> str | None:
    """Why a key can no longer be used (api_key_revoked, tenant_inactive, invalid_api_key when
    it or its tenant is gone), or None while it is live. Credentials derived from a key (the
    realtime tokens) re-check it this way: by id, since they do not carry the key itself."""
    row = ApiKey.objects.filter(pk=key_id).values("revoked_at", "tenant__is_active").first()
    if row is None:
        return "invalid_api_key"
    if row["revoked_at"] is not None:
        return "api_key_revoked"
    if not row["tenant__is_active"]:
        return "tenant_inactive"
    return None


def tenant_allowed_origins(*, tenant_id: str) -> set[str]:
    """The browser origins a tenant allows: those its active publishable keys list."""
    rows = ApiKey.objects.filter(
        tenant_id=tenant_id, kind=ApiKey.Kind.PUBLISHABLE, revoked_at__isnull=True
    ).values_list("allowed_origins", flat=True)
    return {origin.rstrip("/").lower() for row in rows for origin in row}
