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
