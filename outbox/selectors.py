"""Outbox reads: event status, per-target stats, lag (keyword-only, <entity>_<verb>)."""

from __future__ import annotations

import uuid
from datetime import timedelta

from django.db.models import Count, Exists, Min, OuterRef, Q, Sum
from django.db.models.functions import Coalesce
from django.utils import timezone

from outbox import conf
from outbox.models import Delivery, DeliveryStat, OutboxEvent, Target, WorkerHeartbeat
from tenants.scoping import scoped, tenant_get_or_404, tenant_queryset

NO_TARGETS = "no_targets"  # the status of an event no target was subscribed to
EVENT_STATUSES = (NO_TARGETS, *Delivery.Status.values)
# An event's status is its worst delivery's: worst first.
STATUS_RANK = tuple(
    s.value
    for s in (
        Delivery.Status.DEAD,
        Delivery.Status.RETRYING,
        Delivery.Status.PENDING,
        Delivery.Status.CANCELLED,
        Delivery.Status.DELIVERED,
    )
)


def event_status(*, deliveries) -> str:
    """One word for the API: delivered, dead, cancelled, retrying, pending or no_targets."""
    statuses = {d.status for d in deliveries}
    return next((s for s in STATUS_RANK if s in statuses), NO_TARGETS)


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


def events_in_status_q(status: str) -> Q:
    """A filter for events whose status (`event_status`, the worst delivery's) is `status`:
    one delivery in it and none worse."""
    q = events_with_status_q(status)
    if status in STATUS_RANK:
        for worse in STATUS_RANK[: STATUS_RANK.index(status)]:
            q &= ~events_with_status_q(worse)
    return q


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


# Only open and dead deliveries are counted (the partial index outbox_delivery_unsettled,
# index-only); what the worker did comes from the per-minute DeliveryStat rows. Neither grows
# with the delivered history.
UNSETTLED = [*Delivery.OPEN_STATUSES, Delivery.Status.DEAD]
_OPEN_Q = Q(status__in=Delivery.OPEN_STATUSES)
_DEAD_Q = Q(status=Delivery.Status.DEAD)


def unsettled_counts(*, deliveries, group_by: tuple = ("target_id",), dead_since=None):
    """Per group (or one dict with group_by=()): pending (open), dead, dead since
    `dead_since`, and the oldest open one's created_at. `deliveries` is any Delivery
    queryset (scoped to a tenant or not)."""
    extra = {}
    if dead_since is not None:
        extra["dead_recent"] = Count("status", filter=_DEAD_Q & Q(updated_at__gte=dead_since))
    aggregates = {
        "pending": Count("status", filter=_OPEN_Q),
        "dead": Count("status", filter=_DEAD_Q),
        "oldest": Min("created_at", filter=_OPEN_Q),
        **extra,
    }
    rows = deliveries.filter(status__in=UNSETTLED)
    if not group_by:
        return rows.aggregate(**aggregates)
    return rows.values(*group_by).annotate(**aggregates).order_by()


STAT_SUMS = (
    "attempts",
    "attempts_delivered",
    "attempts_retry",
    "attempts_permanent",
    "delivered",
    "dead",
)


def minute_floor(moment):
    return moment.replace(second=0, microsecond=0)


def stats_since(*, since, tenant_id=None, group_by: tuple = ("target_id",)):
    """Sums of the DeliveryStat rows from the minute of `since` on, per group (or one row
    with group_by=()). Reads at most (targets × minutes in the window) rows."""
    rows = scoped(DeliveryStat, tenant_id).filter(minute__gte=minute_floor(since))
    sums = {name: Coalesce(Sum(name), 0) for name in STAT_SUMS}
    if not group_by:
        return rows.aggregate(**sums)
    return rows.values(*group_by).annotate(**sums).order_by()


def target_stats(*, targets=None) -> list[dict]:
    """Per target: pending, oldest pending age (lag), delivered/dead 24 h, success rate, circuit."""
    now = timezone.now()
    since = now - timedelta(hours=24)
    targets = targets if targets is not None else Target.objects.all()
    ids = targets.values("pk")
    unsettled = {
        row["target_id"]: row
        for row in unsettled_counts(
            deliveries=Delivery.objects.filter(target__in=ids), dead_since=since
        )
    }
    done = {row["target_id"]: row for row in stats_since(since=since).filter(target__in=ids)}
    result = []
    for target in targets.select_related("tenant"):
        open_row = unsettled.get(target.pk, {})
        stat = done.get(target.pk, {})
        oldest = open_row.get("oldest")
        tries = stat.get("attempts", 0)
        result.append(
            {
                "tenant": target.tenant.name,
                "target": target.name,
                "kind": target.kind,
                "pending": open_row.get("pending", 0),
                "lag_seconds": (now - oldest).total_seconds() if oldest else 0.0,
                "delivered_24h": stat.get("delivered", 0),
                "dead_24h": open_row.get("dead_recent", 0),
                "success_rate_24h": (stat["attempts_delivered"] / tries) if tries else None,
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
