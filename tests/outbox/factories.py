"""Outbox test set-up: targets through the service (secrets generated like production)."""

from __future__ import annotations

from django.db import transaction

from outbox.models import Delivery, OutboxEvent
from outbox.services import event_publish, target_create


def make_target(tenant, name="hook", kind="webhook", url="http://127.0.0.1:9/", **options):
    return target_create(tenant=tenant, name=name, kind=kind, url=url, **options)


def publish(tenant, n=1, **options) -> list[OutboxEvent]:
    events = []
    for i in range(n):
        with transaction.atomic():
            events.append(
                event_publish(
                    tenant=tenant,
                    event_type=options.get("event_type", "thing.happened"),
                    topic=options.get("topic", "things"),
                    payload=options.get("payload", {"n": i}),
                    target=options.get("target"),
                    idempotency_key=options.get("idempotency_key"),
                    ordering_key=options.get("ordering_key"),
                )
            )
    return events


def statuses() -> dict[str, int]:
    counts: dict[str, int] = {}
    for status in Delivery.objects.values_list("status", flat=True):
        counts[status] = counts.get(status, 0) + 1
    return counts
