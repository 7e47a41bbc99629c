"""Operator events: Atlas tells a tenant's subscribed targets when one of its targets breaks
or recovers (like Svix's operational webhooks), through its own outbox.

- `target.circuit_opened` / `target.circuit_closed`: the breaker tripped (closed -> open) or
  closed again (after its probes, or reset by staff);
- `target.paused`: a 410 Gone from the receiver, or paused by staff;
- `target.recovered`: a paused target resumed;
- `delivery.dead`: deliveries dead-lettered, at most one notice per target per
  DEAD_NOTICE_MINUTES carrying how many died since the previous notice.

Never routed to the target they are about. No loops: a dead delivery of an operator event
raises no `delivery.dead` (a notice about X dying at Y would otherwise notify X, whose
failure would notify Y, forever); the other types are state changes, bounded by the states.
`*` subscriptions do not receive them (outbox.routing).
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from core.errors import DomainError
from outbox.models import Delivery, Target
from outbox.routing import OPERATOR_TOPIC

logger = logging.getLogger("outbox.operator")

DEAD_NOTICE_MINUTES = 10

CIRCUIT_OPENED = "target.circuit_opened"
CIRCUIT_CLOSED = "target.circuit_closed"
PAUSED = "target.paused"
RECOVERED = "target.recovered"
DELIVERY_DEAD = "delivery.dead"


def operator_event_publish(*, target_id, event_type: str, **fields) -> None:
    """Publish one operator event about a target (in the caller's transaction)."""
    # services imports the delivery package, which imports this module
    from outbox.services import CONTROL_CHARACTERS, event_publish_created

    row = Target.objects.filter(pk=target_id).values("tenant_id", "name", "kind").first()
    if row is None:
        return
    payload = {"targetId": str(target_id), "target": row["name"], "kind": row["kind"], **fields}
    if isinstance(payload.get("reason"), str):  # an error text: short, printable
        payload["reason"] = CONTROL_CHARACTERS.sub(" ", payload["reason"])[:200]
    try:
        # a savepoint: a refused notice must not undo the breaker / pause change it reports
        with transaction.atomic():
            event_publish_created(
                tenant=row["tenant_id"],
                event_type=event_type,
                topic=OPERATOR_TOPIC,
                payload=payload,
                exclude_target_id=target_id,
            )
    except (DomainError, DatabaseError) as exc:
        logger.warning("operator event %s about %s not published: %s", event_type, target_id, exc)


def circuit_changed(*, target_id, old: str, new: str, reason: str) -> None:
    """Called for each breaker transition: only closed -> open and back to closed are news
    (open <-> half-open every minute while the receiver is down is not)."""
    if old == Target.Circuit.CLOSED and new == Target.Circuit.OPEN:
        operator_event_publish(target_id=target_id, event_type=CIRCUIT_OPENED, reason=reason)
    elif new == Target.Circuit.CLOSED and old != Target.Circuit.CLOSED:
        operator_event_publish(target_id=target_id, event_type=CIRCUIT_CLOSED, reason=reason)


def target_paused(*, target_id, reason: str) -> None:
    operator_event_publish(target_id=target_id, event_type=PAUSED, reason=reason)


def target_recovered(*, target_id, reason: str = "resumed by staff") -> None:
    operator_event_publish(target_id=target_id, event_type=RECOVERED, reason=reason)


# Takes the notice slot of each target whose last notice is older than the window, returning
# the previous notice time (the count starts there). One statement: two workers recording
# deaths of the same target at once cannot both take it.
_NOTICE_SLOT_SQL = """
UPDATE outbox_target t SET dead_notice_at = %(now)s
FROM (SELECT id, dead_notice_at AS previous FROM outbox_target
      WHERE id = ANY(%(ids)s::uuid[])
        AND (dead_notice_at IS NULL OR dead_notice_at <= %(window_start)s)
      FOR UPDATE) o
WHERE t.id = o.id
RETURNING t.id, o.previous
"""

# Targets with deaths nobody was told about yet (they died inside a notice's window).
_UNTOLD_SQL = f"""
SELECT t.id FROM outbox_target t
WHERE t.dead_notice_at IS NOT NULL AND t.dead_notice_at <= %(window_start)s
  AND EXISTS (SELECT 1 FROM outbox_delivery d JOIN outbox_outboxevent e ON e.id = d.event_id
              WHERE d.target_id = t.id AND d.status = '{Delivery.Status.DEAD.value}'
                AND d.updated_at > t.dead_notice_at AND e.topic <> '{OPERATOR_TOPIC}')
"""


def dead_notices_publish(*, target_ids, now=None) -> int:
    """A `delivery.dead` for each of these targets whose window allows one, counting the
    deliveries (of business events) dead since its previous notice. Returns notices sent."""
    ids = sorted({str(t) for t in target_ids})
    if not ids:
        return 0
    now = now or timezone.now()
    window_start = now - timedelta(minutes=DEAD_NOTICE_MINUTES)
    sent = 0
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(_NOTICE_SLOT_SQL, {"ids": ids, "now": now, "window_start": window_start})
            slots = cursor.fetchall()
        for target_id, previous in slots:
            dead = (
                Delivery.objects.filter(
                    target_id=target_id,
                    status=Delivery.Status.DEAD,
                    updated_at__gt=previous or window_start,
                )
                .exclude(event__topic=OPERATOR_TOPIC)
                .order_by("-updated_at")
            )
            count = dead.count()
            if not count:  # e.g. requeued meanwhile: keep the slot, say nothing
                continue
            last = dead.values("event_id", "event__event_type", "last_error").first()
            operator_event_publish(
                target_id=target_id,
                event_type=DELIVERY_DEAD,
                count=count,
                windowMinutes=DEAD_NOTICE_MINUTES,
                since=(previous or window_start).isoformat(),
                lastEventId=str(last["event_id"]) if last else None,
                lastEventType=last["event__event_type"] if last else None,
                lastError=last["last_error"][:200] if last else None,
            )
            sent += 1
    return sent


def untold_dead_notices_publish(*, now=None) -> int:
    """The sweep's part: deaths that came inside a window get their notice once it ends,
    even when no later death triggers one."""
    now = now or timezone.now()
    window_start = now - timedelta(minutes=DEAD_NOTICE_MINUTES)
    with connection.cursor() as cursor:
        cursor.execute(_UNTOLD_SQL, {"window_start": window_start})
        ids = [row[0] for row in cursor.fetchall()]
    return dead_notices_publish(target_ids=ids, now=now)


def notices_for_verdicts(results, dead_ids: set[int]) -> None:
    """After a record: notices for the targets whose deliveries just died (best effort)."""
    targets = {
        r.job.target_id
        for r in results
        if r.job.delivery_id in dead_ids and r.job.topic != OPERATOR_TOPIC
    }
    if targets:
        dead_notices_publish(target_ids=targets)
