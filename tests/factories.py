"""Factories for test set-up. Each domain app adds its own below (one section per app)."""

from __future__ import annotations

import factory
from django.db import transaction

from tenants.models import Tenant
from tenants.services import apikey_create


class TenantFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Tenant
        django_get_or_create = ("name",)

    name = factory.Sequence(lambda n: f"Tenant {n}")


def make_api_key(tenant: Tenant, kind: str = "secret", origins=None) -> str:
    """A real key through the service (hashing included); returns the full key."""
    with transaction.atomic():
        _key, raw = apikey_create(tenant=tenant, kind=kind, allowed_origins=origins)
    return raw
