"""The tenant choke point: every tenant-owned query goes through these two functions.

A row of another tenant is never read or written: lookups are filtered by tenant_id, and a
miss is 404 (not 403) so that ids of other tenants do not leak.
"""

from __future__ import annotations

from django.db.models import Model, QuerySet

from core.errors import DomainError, ErrorKind


def tenant_queryset(model_or_queryset: type[Model] | QuerySet, *, tenant_id) -> QuerySet:
    queryset = (
        model_or_queryset
        if isinstance(model_or_queryset, QuerySet)
        else model_or_queryset._default_manager.all()
    )
    if tenant_id is None:
        raise ValueError("tenant_id is required for a tenant-owned query")
    return queryset.filter(tenant_id=tenant_id)


def tenant_get_or_404(model_or_queryset, *, tenant_id, **lookup):
    obj = tenant_queryset(model_or_queryset, tenant_id=tenant_id).filter(**lookup).first()
    if obj is None:
        raise DomainError("not_found", "No such object.", kind=ErrorKind.NOT_FOUND)
    return obj


def scoped(model_or_queryset: type[Model] | QuerySet, tenant_id) -> QuerySet:
    """Through the choke point when a tenant is given; the operator's overall view (staff
    only, tenant_id=None) reads every tenant's rows."""
    if tenant_id:
        return tenant_queryset(model_or_queryset, tenant_id=tenant_id)
    if isinstance(model_or_queryset, QuerySet):
        return model_or_queryset
    return model_or_queryset._default_manager.all()
