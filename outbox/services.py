"""Outbox writes. `event_publish` is the one way any app records a business event."""

from __future__ import annotations

import uuid

from django.db import transaction
from django.utils import timezone

from outbox.models import OutboxEvent


def event_publish(
    *,
    tenant,
    event_type: str,
    topic: str,
    payload: dict,
    target=None,
    idempotency_key: str | None = None,
    ordering_key: str | None = None,
) -> OutboxEvent:
    """Write an event inside the caller's transaction (rolled back with it).

    A repeated idempotency_key (unique per tenant) returns the existing event.
    `tenant` may be a Tenant or a tenant id. `target` is a target name (None: the tenant's
    default routing).
    """
    tenant_id = getattr(tenant, "pk", tenant)
    key = idempotency_key or str(uuid.uuid4())
    with transaction.atomic():
        event, _created = OutboxEvent.objects.get_or_create(
            tenant_id=tenant_id,
            idempotency_key=key,
            defaults={
                "event_type": event_type,
                "topic": topic,
                "payload": payload,
                "ordering_key": ordering_key,
                "occurred_at": timezone.now(),
            },
        )
    return event
