"""Rows in every tenant-owned table, for the row-level-security tests.

The usual factories seed the main tables; any tenant table still empty (a table added later
included) gets one row built from its fields, so "every table" keeps meaning every table.
"""

from __future__ import annotations

import datetime
import uuid

from django.apps import apps
from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.utils import timezone

from tests.factories import TenantFactory, make_api_key
from tests.outbox.factories import make_target, publish
from tests.payments.factories import AllowedPriceFactory, PaymentSessionFactory
from uploads.models import RetryLog, RetrySource


def tenant_models() -> list[type[models.Model]]:
    """Every model with a tenant_id column: each must be behind a policy."""
    return [
        model
        for model in apps.get_models()
        if any(field.column == "tenant_id" for field in model._meta.concrete_fields)
    ]


def seed(tenant) -> None:
    from tests.assessments.factories import EventFactory, SubmissionFactory
    from tests.uploads.factories import staged_attachment

    make_api_key(tenant, "secret")
    SubmissionFactory(session__tenant=tenant)
    EventFactory(tenant=tenant)
    make_target(tenant, name="hook")
    publish(tenant, n=2, target="hook")
    staged_attachment(tenant)
    PaymentSessionFactory(tenant=tenant)
    AllowedPriceFactory(tenant=tenant)
    RetryLog.objects.create(source=RetrySource.MANUAL, tenant=tenant, started_at=timezone.now())
    for model in tenant_models():
        if not model._default_manager.filter(tenant_id=tenant.pk).exists():
            _row_for(model, tenant)


def two_tenants():
    alpha, beta = TenantFactory(name="Alpha"), TenantFactory(name="Beta")
    seed(alpha)
    seed(beta)
    return alpha, beta


def _row_for(model, tenant) -> models.Model:
    """One row with plain values for the required fields, related rows of the same tenant."""
    values: dict = {"tenant": tenant}
    for field in model._meta.concrete_fields:
        if field.name in values or field.primary_key or field.null or field.has_default():
            continue
        values[field.name] = _value_for(field, tenant)
    return model._default_manager.create(**values)


def _value_for(field, tenant):
    if field.choices:
        return field.choices[0][0]
    if isinstance(field, models.ForeignKey):
        related = field.related_model
        rows = related._default_manager.all()
        if any(f.column == "tenant_id" for f in related._meta.concrete_fields):
            rows = rows.filter(tenant_id=tenant.pk)
        return rows.first() or _row_for(related, tenant)
    if isinstance(field, models.BooleanField):
        return False
    if isinstance(field, models.DateTimeField):
        return timezone.now()
    if isinstance(field, models.DateField):
        return datetime.date.today()
    if isinstance(field, (models.IntegerField, models.FloatField, models.DecimalField)):
        return 1
    if isinstance(field, models.UUIDField):
        return uuid.uuid4()
    if isinstance(field, models.JSONField):
        return {}
    if isinstance(field, ArrayField):
        return []
    return f"rls-{uuid.uuid4().hex[:8]}"
