"""Replay: send a target's deliveries of a time window again, and back-fill the deliveries it
never had (a target created, or subscribed, after the events were published). Used by the
API (`POST /api/outbox/targets/{id}/replay`), the admin action and `outbox_requeue`.

Capped like Svix's recover: a window inside the last MAX_WINDOW_DAYS days, at most
MAX_DELIVERIES deliveries per replay (the oldest first; a second replay continues)."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta

from django.db import connection, transaction
from django.utils import timezone

from core.errors import DomainError, ErrorKind
from outbox import conf, routing
from outbox.models import Delivery, ReplayRequest, Target

MAX_DELIVERIES = 10_000
MAX_WINDOW_DAYS = 14
# One API replay per target per interval: each may requeue 10,000 deliveries, so a loop of
# replays would turn a secret key into unlimited outbound traffic and saturate the shared
# workers. Staff (admin, outbox_requeue) are not limited.
MIN_INTERVAL = timedelta(seconds=60)
# statuses a replay may ask for; none given: the failed ones (dead, cancelled) + back-fill
REPLAYABLE = ("dead", "cancelled", "delivered", "retrying")
DEFAULT_STATUSES = ("dead", "cancelled")

# Back to pending, due now, fresh attempt budget. A delivery under a live lease is on the
# wire right now: left alone (clearing its lease would let a second worker send it).
_REQUEUE_SQL = f"""
UPDATE outbox_delivery d SET status = '{Delivery.Status.PENDING.value}', attempts = 0,
    next_attempt_at = %(now)s, locked_until = NULL, locked_by = '', updated_at = %(now)s
WHERE d.id IN (
    SELECT d2.id FROM outbox_delivery d2 JOIN outbox_outboxevent e ON e.id = d2.event_id
    WHERE d2.target_id = %(target)s AND d2.status = ANY(%(statuses)s)
      AND e.created_at >= %(since)s AND e.created_at < %(until)s
      AND (d2.locked_until IS NULL OR d2.locked_until <= %(now)s)
    ORDER BY e.created_at, d2.id
    LIMIT %(limit)s)
"""

# The events of the window this target is subscribed to and has no delivery of, as the
# publish statement would have routed them (outbox.routing), except events about the target
# itself and test events sent to another target.
_BACKFILL_SQL = f"""
INSERT INTO outbox_delivery (tenant_id, event_id, target_id, ordering_key, status, attempts,
                             next_attempt_at, locked_by, last_error, created_at, updated_at)
SELECT e.tenant_id, e.id, t.id, e.ordering_key, '{Delivery.Status.PENDING.value}', 0,
       %(now)s, '', '', %(now)s, %(now)s
FROM outbox_target t JOIN outbox_outboxevent e ON e.tenant_id = t.tenant_id
WHERE t.id = %(target)s
  AND e.created_at >= %(since)s AND e.created_at < %(until)s
  AND {routing.subscribed_sql(target="t", event_type="e.event_type", payload="e.payload")}
  AND NOT (e.topic = '{routing.OPERATOR_TOPIC}' AND e.payload->>'targetId' = t.id::text)
  AND e.event_type <> 'outbox.test'
  AND NOT EXISTS (SELECT 1 FROM outbox_delivery d WHERE d.event_id = e.id AND d.target_id = t.id)
ORDER BY e.created_at, e.id
LIMIT %(limit)s
ON CONFLICT ON CONSTRAINT outbox_delivery_event_target DO NOTHING
"""


def replay_window_check(*, since: datetime, until: datetime | None, now=None) -> datetime:
    """The window's end (now when not given), or a 400 naming what is wrong."""
    now = now or timezone.now()
    until = until or now
    if since >= until:
        raise DomainError("invalid_replay_window", "since must be before until.")
    if since < now - timedelta(days=MAX_WINDOW_DAYS):
        raise DomainError(
            "replay_window_too_long",
            f"since may be at most {MAX_WINDOW_DAYS} days ago.",
            details={"maxDays": MAX_WINDOW_DAYS},
        )
    return until


def replay_status_check(status: str | None) -> tuple[str, ...]:
    if status is None or status == "":
        return DEFAULT_STATUSES
    if status not in REPLAYABLE:
        raise DomainError(
            "invalid_replay_status",
            f"status must be one of {', '.join(REPLAYABLE)}.",
            details={"allowed": list(REPLAYABLE)},
        )
    return (status,)


def target_replay(
    *,
    target: Target,
    since: datetime,
    until: datetime | None = None,
    status: str | None = None,
    idempotency_key: str | None = None,
    requested_by: str = "",
    rate_limited: bool = True,
) -> tuple[ReplayRequest, bool]:
    """Requeue the target's deliveries of events published in [since, until) with `status`
    (default: dead and cancelled, then back-fill the deliveries it never had). Returns the
    replay's row and whether it is new: a repeated Idempotency-Key with the same window
    returns the first answer and changes nothing; with another window, 422."""
    now = timezone.now()
    asked_until = until.isoformat() if until else ""  # a retry without `until` is the same ask
    until = replay_window_check(since=since, until=until, now=now)
    statuses = replay_status_check(status)
    if not target.is_enabled:
        raise DomainError(
            "target_disabled", f"Target {target.name!r} is disabled.", kind=ErrorKind.CONFLICT
        )
    fingerprint = hashlib.sha256(
        f"{target.pk}|{since.isoformat()}|{asked_until}|{status or ''}".encode()
    ).hexdigest()
    with transaction.atomic():
        if idempotency_key:
            earlier = _earlier_answer(target.tenant_id, idempotency_key, fingerprint)
            if earlier is not None:
                return earlier, False
        if rate_limited:
            _refuse_too_soon(target, now)
        params = {
            "target": target.pk,
            "since": since,
            "until": until,
            "now": now,
            "statuses": list(statuses),
            "limit": MAX_DELIVERIES,
        }
        with connection.cursor() as cursor:
            cursor.execute(_REQUEUE_SQL, params)
            requeued = cursor.rowcount
        backfilled = 0
        if status in (None, "") and requeued < MAX_DELIVERIES:
            backfilled = target_backfill(
                target=target, since=since, until=until, limit=MAX_DELIVERIES - requeued, now=now
            )
        if requeued:
            _workers_wake()
        replay = ReplayRequest.objects.create(
            tenant_id=target.tenant_id,
            target=target,
            idempotency_key=idempotency_key or None,
            fingerprint=fingerprint,
            since=since,
            until=until,
            status=status or "",
            requeued=requeued,
            backfilled=backfilled,
            requested_by=requested_by[:150],
        )
    return replay, True


def _refuse_too_soon(target: Target, now) -> None:
    # the target's row lock serialises concurrent replays of it, so two cannot both pass
    Target.objects.select_for_update().filter(pk=target.pk).exists()
    last = (
        ReplayRequest.objects.filter(target=target, created_at__gt=now - MIN_INTERVAL)
        .order_by("-created_at")
        .values_list("created_at", flat=True)
        .first()
    )
    if last is not None:
        wait = int((last + MIN_INTERVAL - now).total_seconds()) + 1
        raise DomainError(
            "replay_rate_limited",
            f"This target was replayed less than {int(MIN_INTERVAL.total_seconds())} s ago; "
            f"try again in {wait} s.",
            kind=ErrorKind.RATE_LIMITED,
            details={"retryAfterSeconds": wait},
        )


def target_backfill(*, target: Target, since, until, limit=MAX_DELIVERIES, now=None) -> int:
    """Create the deliveries the target never had for events of [since, until) it is
    subscribed to (oldest first, at most `limit`); returns how many."""
    with connection.cursor() as cursor:
        cursor.execute(
            _BACKFILL_SQL,
            {
                "target": target.pk,
                "since": since,
                "until": until,
                "now": now or timezone.now(),
                "limit": limit,
            },
        )
        created = cursor.rowcount
    if created:
        _workers_wake()
    return created


def _workers_wake() -> None:
    """NOTIFY the workers (on commit), as a publish does: rows are due now."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_notify(%s, '0')", [conf.CHANNEL_EVENTS])


def _earlier_answer(tenant_id, key: str, fingerprint: str) -> ReplayRequest | None:
    """The replay this key already made (serialised per key: two concurrent requests with
    one key replay once), or a 422 when the key came with another window."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended('outbox.replay:' || %s, 0))",
            [f"{tenant_id}:{key}"],
        )
    earlier = ReplayRequest.objects.filter(tenant_id=tenant_id, idempotency_key=key).first()
    if earlier is not None and earlier.fingerprint != fingerprint:
        raise DomainError(
            "idempotency_key_reused",
            "This Idempotency-Key was used for another replay.",
            kind=ErrorKind.UNPROCESSABLE,
        )
    return earlier
