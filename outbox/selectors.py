"""Outbox reads: event status, per-target stats, lag (keyword-only, <entity>_<verb>)."""

from __future__ import annotations

import uuid
from datetime import timedelta

from django.db.models import Count, Exists, Min, OuterRef, Q
from django.utils import timezone

from outbox import conf
from outbox.models import Delivery, DeliveryAttempt, OutboxEvent, Target, WorkerHeartbeat
from tenants.scoping import tenant_get_or_404, tenant_queryset

NO_TARGETS = "no_targets"  # the status of an event no target was subscribed to
EVENT_STATUSES = (NO_TARGETS, *Delivery.Status.values)


def event_status(*, deliveries) -> str:
    """One word for the API: delivered, dead, cancelled, retrying, pending or no_targets."""
    status = Delivery.Status
    statuses = {d.status for d in deliveries}
    if not statuses:
        return NO_TARGETS
    for worst_first in (status.DEAD, status.RETRYING, status.PENDING):
        if worst_first in statuses:
            return worst_first.value
    return (status.CANCELLED if status.CANCELLED in statuses else status.DELIVERED).value


def event_get(*, tenant_id, event_id) -> OutboxEvent:
    queryset = tenant_queryset(OutboxEvent, tenant_id=tenant_id).prefetch_related(
        "deliveries__target", "deliveries__attempt_rows"
    )
    return tenant_get_or_404(queryset, tenant_id=tenant_id, pk=event_id)


def event_list(*, tenant_id, topic=None, event_type=None, status=None):
    """`status`: no_targets (no matching target: nobody was subscribed), or events with at
    least one delivery in that status."""
    queryset = tenant_queryset(OutboxEvent, tenant_id=tenant_id).prefetch_related(
        "deliveries__target"
    )
    if topic:
        queryset = queryset.filter(topic=topic)
    if event_type:
        queryset = queryset.filter(event_type=event_type)
    if status:
        queryset = queryset.filter(events_with_status_q(status))
    return queryset


def events_with_status_q(status: str) -> Q:
    """A filter for events: no delivery at all (no_targets), or one in `status`."""
    deliveries = Delivery.objects.filter(event=OuterRef("pk"))
    if status == NO_TARGETS:
        return ~Exists(deliveries)
    return Exists(deliveries.filter(status=status))


def target_list(*, tenant_id):
    return tenant_queryset(Target, tenant_id=tenant_id).order_by("name")


def target_get(*, tenant_id, name) -> Target:
    """By name, or by id (the target routes take either)."""
    try:
        target_id = uuid.UUID(str(name))
    except ValueError:
        return tenant_get_or_404(Target, tenant_id=tenant_id, name=name)
    queryset = tenant_queryset(Target, tenant_id=tenant_id).filter(Q(pk=target_id) | Q(name=name))
    return tenant_get_or_404(queryset, tenant_id=tenant_id)


def target_stats(*, targets=None) -> list[dict]:
    """Per target: pending, oldest pending age (lag), delivered/dead 24 h, success rate, circuit."""
    now = timezone.now()
    since = now - timedelta(hours=24)
    targets = targets if targets is not None else Target.objects.all()
    open_q = Q(deliveries__status__in=Delivery.OPEN_STATUSES)
    rows = targets.annotate(
        pending=Count("deliveries", filter=open_q),
        oldest_pending=Min("deliveries__created_at", filter=open_q),
        delivered_24h=Count(
            "deliveries",
            filter=Q(
                deliveries__status=Delivery.Status.DELIVERED,
                deliveries__delivered_at__gte=since,
            ),
        ),
        dead_24h=Count(
            "deliveries",
            filter=Q(deliveries__status=Delivery.Status.DEAD, deliveries__updated_at__gte=since),
        ),
    ).select_related("tenant")
    attempts = {
        row["delivery__target_id"]: row
        for row in DeliveryAttempt.objects.filter(created_at__gte=since)
        .values("delivery__target_id")
        .annotate(
            total=Count("id"), ok=Count("id", filter=Q(outcome=DeliveryAttempt.Outcome.DELIVERED))
        )
    }
    result = []
    for target in rows:
        tried = attempts.get(target.id, {"total": 0, "ok": 0})
        result.append(
            {
                "tenant": target.tenant.name,
                "target": target.name,
                "kind": target.kind,
                "pending": target.pending,
                "lag_seconds": (now - target.oldest_pending).total_seconds()
                if target.oldest_pending
                else 0.0,
                "delivered_24h": target.delivered_24h,
                "dead_24h": target.dead_24h,
                "success_rate_24h": (tried["ok"] / tried["total"]) if tried["total"] else None,
                "circuit": target.circuit_state,
                "paused": target.paused_at is not None,
            }
        )
    return result


def lag_seconds() -> float:
    """Age of the oldest due, undelivered delivery (0 when nothing is waiting)."""
    now = timezone.now()
    oldest = Delivery.objects.filter(
        status__in=Delivery.OPEN_STATUSES, next_attempt_at__lte=now, target__paused_at__isnull=True
    ).aggregate(oldest=Min("created_at"))["oldest"]
    return (now - oldest).total_seconds() if oldest else 0.0


def workers_alive(*, now=None):
    """Outbox workers with a fresh heartbeat that have not said they stopped (the one
    "live worker" query: /health, atlas_status and /metrics all ask this)."""
    stale = (now or timezone.now()) - timedelta(seconds=conf.get("OUTBOX_HEARTBEAT_STALE_SECONDS"))
    return WorkerHeartbeat.objects.filter(last_seen_at__gte=stale, stopped_at__isnull=True)
