"""Outbox writes. `event_publish` is the one way any app records a business event."""

from __future__ import annotations

import base64
import json
import re
import secrets
import uuid
from datetime import timedelta

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from core.errors import DomainError, ErrorKind
from core.validation import check_storable
from outbox import conf, operator_events, routing
from outbox.delivery import egress
from outbox.models import EVENT_SEQ_NAME, CircuitTransition, Delivery, OutboxEvent, Target
from tenants.scoping import tenant_get_or_404, tenant_queryset

# The routing condition (bench/outbox.py compares the statement with and without it).
_SUBSCRIBED = routing.subscribed_sql(
    target="t", event_type="%(event_type)s", payload="%(payload)s::jsonb"
)

# One round trip: the event, one delivery per subscribed target (or the one named target),
# and the NOTIFY that fires on commit (so nothing is announced before the caller's
# transaction commits). The seq is taken only once the transaction has its id: the realtime
# hub relies on every seq's owner being among the transactions it sees running
# (outbox/realtime/hub.py, holes).
_PUBLISH_SQL = f"""
WITH ev AS (
    INSERT INTO outbox_outboxevent (id, tenant_id, topic, event_type, payload, idempotency_key,
                                    ordering_key, occurred_at, created_at, updated_at, seq)
    VALUES (%(id)s, %(tenant)s, %(topic)s, %(event_type)s, %(payload)s::jsonb, %(key)s,
            %(ordering_key)s, %(now)s, %(now)s, %(now)s,
            (SELECT nextval('{EVENT_SEQ_NAME}') WHERE pg_current_xact_id() IS NOT NULL))
    ON CONFLICT ON CONSTRAINT outbox_event_tenant_idem_key_uniq DO NOTHING
    RETURNING id, seq
), routed AS (
    INSERT INTO outbox_delivery (tenant_id, event_id, target_id, ordering_key, status, attempts,
                                 next_attempt_at, locked_by, last_error, created_at, updated_at)
    SELECT %(tenant)s, ev.id, t.id, %(ordering_key)s, %(pending)s, 0, %(now)s, '', '',
           %(now)s, %(now)s
    FROM ev JOIN outbox_target t
      ON t.tenant_id = %(tenant)s AND t.is_enabled
     AND (t.id = %(target)s::uuid OR (%(target)s::uuid IS NULL AND {_SUBSCRIBED}))
     AND t.id IS DISTINCT FROM %(exclude)s::uuid
    RETURNING id
)
SELECT ev.seq, pg_notify('{conf.CHANNEL_EVENTS}', ev.seq::text) FROM ev
"""


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

    A repeated idempotency_key (unique per tenant) returns the existing event. `tenant` may be
    a Tenant or a tenant id. `target` is a target name: None routes to every enabled target
    subscribed to the event (outbox.routing).
    """
    event, _created = event_publish_created(
        tenant=tenant,
        event_type=event_type,
        topic=topic,
        payload=payload,
        target=target,
        idempotency_key=idempotency_key,
        ordering_key=ordering_key,
    )
    return event


def event_publish_created(
    *,
    tenant,
    event_type,
    topic,
    payload,
    target=None,
    idempotency_key=None,
    ordering_key=None,
    exclude_target_id=None,
) -> tuple[OutboxEvent, bool]:
    """`event_publish` that also says whether the row is new (the API answers 201 vs 200).
    `exclude_target_id`: never route to that target (an operator event about it)."""
    tenant_id = str(getattr(tenant, "pk", tenant))
    body = _payload_json(payload)
    if not (event_type or "").strip() or not (topic or "").strip():
        raise DomainError("invalid_event", "event_type and topic must not be blank.")
    refuse_control_characters(
        eventType=event_type,
        topic=topic,
        target=target,
        idempotencyKey=idempotency_key,
        orderingKey=ordering_key,
    )
    target_id = _target_id_for(tenant_id, target) if target else None
    key = idempotency_key or str(uuid.uuid4())
    now = timezone.now()
    event_id = uuid.uuid4()
    with connection.cursor() as cursor:
        cursor.execute(
            _PUBLISH_SQL,
            {
                "id": event_id,
                "tenant": tenant_id,
                "topic": topic,
                "event_type": event_type,
                "payload": body,
                "key": key,
                "ordering_key": ordering_key or None,
                "now": now,
                "target": target_id,
                "exclude": str(exclude_target_id) if exclude_target_id else None,
                "pending": Delivery.Status.PENDING,
            },
        )
        row = cursor.fetchone()
    if row is None:  # the key exists: return the original event, unchanged
        existing = tenant_queryset(OutboxEvent, tenant_id=tenant_id).get(idempotency_key=key)
        return existing, False
    seq, _notified = row
    event = OutboxEvent(
        id=event_id,
        tenant_id=tenant_id,
        topic=topic,
        event_type=event_type,
        payload=json.loads(body),
        idempotency_key=key,
        ordering_key=ordering_key or None,
        occurred_at=now,
        created_at=now,
        updated_at=now,
        seq=seq,
    )
    event._state.adding = False
    event._state.db = "default"
    return event, True


# C0 and C1 controls (newlines, NUL, ESC, NEL…) and the Unicode line/paragraph separators.
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def refuse_control_characters(**fields: str | None) -> None:
    """Names travel into SSE lines, HTTP headers, Slack and the console: a newline in one
    could forge an SSE `id:` line or a header. One code for every such field; `details.field`
    names it as the API spells it."""
    for name, value in fields.items():
        if value and CONTROL_CHARACTERS.search(value):
            raise DomainError(
                "control_characters_not_allowed",
                f"{name} may not contain control characters (line breaks, tabs, NUL, ESC…).",
                details={"field": name},
            )


def _payload_json(payload) -> str:
    if not isinstance(payload, dict):
        raise DomainError("payload_not_object", "payload must be a JSON object.")
    body = json.dumps(payload, cls=DjangoJSONEncoder, separators=(",", ":"))
    if "\\u0000" in body or "\\ud" in body:  # maybe NUL or a lone surrogate: jsonb refuses
        check_storable(json.loads(body), "$.payload")  # as stored: tuples, encoded objects…
    limit = conf.get("OUTBOX_MAX_PAYLOAD_BYTES")
    if len(body.encode()) > limit:
        raise DomainError(
            "payload_too_large",
            f"payload is larger than {limit} bytes.",
            kind=ErrorKind.TOO_LARGE,
            details={"limitBytes": limit},
        )
    return body


def _target_id_for(tenant_id: str, name: str) -> str:
    row = (
        tenant_queryset(Target, tenant_id=tenant_id)
        .filter(name=name)
        .values_list("id", "is_enabled")
        .first()
    )
    if row is None:
        raise DomainError(
            "unknown_target", f"No target named {name!r}.", details={"target": str(name)}
        )
    target_id, enabled = row
    if not enabled:
        raise DomainError("target_disabled", f"Target {name!r} is disabled.")
    return str(target_id)


# --- Targets ---------------------------------------------------------------------------------


def secret_generate() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def target_create(
    *,
    tenant,
    name: str,
    kind: str,
    url: str = "",
    secret: str | None = None,
    timeout_seconds: float = 10.0,
    max_attempts: int | None = None,
    rate_limit_per_second: float | None = None,
    backoff_base_seconds: int | None = None,
    backoff_max_seconds: int | None = None,
    event_types: list[str] | None = None,
    payload_filter: dict | None = None,
    permanent_statuses: list[int] | None = None,
) -> Target:
    tenant_id = getattr(tenant, "pk", tenant)
    refuse_control_characters(name=name)
    event_types = routing.event_types_check(event_types if event_types is not None else ["*"])
    payload_filter = routing.payload_filter_check(payload_filter)
    permanent_statuses = routing.permanent_statuses_check(permanent_statuses)
    if kind not in Target.Kind.values:
        raise DomainError("invalid_target_kind", "kind must be webhook, slack or realtime.")
    if kind != Target.Kind.REALTIME and not url:
        raise DomainError("target_url_required", f"A {kind} target needs a url.")
    if url:
        target_url_check(url)
    if secret is not None and not _valid_secret(secret):
        raise DomainError("invalid_secret", "secret must be whsec_ followed by base64.")
    target_timeout_check(timeout_seconds)
    if rate_limit_per_second is None and kind == Target.Kind.SLACK:
        rate_limit_per_second = conf.get("OUTBOX_SLACK_RATE_PER_SECOND")
    try:
        with transaction.atomic():
            _target_slot_take(tenant_id)
            return Target.objects.create(
                tenant_id=tenant_id,
                name=name,
                kind=kind,
                url=url or "",
                secret=secret or secret_generate(),
                timeout_seconds=timeout_seconds,
                max_attempts=max_attempts,
                rate_limit_per_second=rate_limit_per_second,
                backoff_base_seconds=backoff_base_seconds,
                backoff_max_seconds=backoff_max_seconds,
                event_types=event_types,
                payload_filter=payload_filter,
                permanent_statuses=permanent_statuses,
            )
    except IntegrityError as exc:
        raise DomainError(
            "target_exists", f"A target named {name!r} exists already.", kind=ErrorKind.CONFLICT
        ) from exc


def target_url_check(url: str) -> None:
    """Only http(s) to public addresses (outbox.delivery.egress): every address the host
    resolves to now must be public or inside OUTBOX_ALLOWED_TARGET_NETWORKS. The worker checks
    again at every connect, so a name that does not resolve yet is accepted."""
    try:
        egress.url_check(url)
    except egress.EgressRefused as refused:
        raise DomainError(
            egress.REFUSED,
            "Targets must be http(s) URLs of public addresses; private, loopback, link-local "
            "and metadata addresses are refused.",
            details={"reason": refused.reason},
        ) from refused


def target_timeout_check(seconds: float) -> None:
    most = conf.MAX_TARGET_TIMEOUT_SECONDS
    if not 0 < seconds <= most:
        raise DomainError(
            "invalid_timeout",
            f"timeoutSeconds must be above 0 and at most {most:g}.",
            details={"maxSeconds": most},
        )


def _target_slot_take(tenant_id) -> None:
    """At most OUTBOX_MAX_TARGETS_PER_TENANT targets. Counted under a per-tenant advisory lock
    (held to the end of the caller's transaction) so two concurrent creates cannot both pass."""
    limit = conf.get("OUTBOX_MAX_TARGETS_PER_TENANT")
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended('outbox.targets:' || %s, 0))",
            [str(tenant_id)],
        )
    if tenant_queryset(Target, tenant_id=tenant_id).count() >= limit:
        raise DomainError(
            "too_many_targets",
            f"A tenant may have at most {limit} targets.",
            details={"limit": limit},
        )


def _valid_secret(secret: str) -> bool:
    if not secret.startswith("whsec_"):
        return False
    try:
        return len(base64.b64decode(secret[6:], validate=True)) >= 16
    except ValueError:
        return False


def target_defaults_create(*, tenant) -> list[Target]:
    """Called by tenants.services.tenant_create: default n8n / slack targets from settings."""
    created = []
    if settings.N8N_WEBHOOK_URL:
        created.append(
            target_create(
                tenant=tenant,
                name="n8n",
                kind=Target.Kind.WEBHOOK,
                url=settings.N8N_WEBHOOK_URL,
                secret=settings.N8N_WEBHOOK_SECRET or None,
            )
        )
    if settings.SLACK_WEBHOOK_URL:
        created.append(
            target_create(
                tenant=tenant, name="slack", kind=Target.Kind.SLACK, url=settings.SLACK_WEBHOOK_URL
            )
        )
    return created


_UNSET = object()


def target_routing_update(
    *, target: Target, event_types=_UNSET, payload_filter=_UNSET, permanent_statuses=_UNSET
) -> Target:
    """Change what a target subscribes to and which statuses it treats as permanent (only
    the arguments given). Applies to events published from now on; replay back-fills."""
    fields = []
    if event_types is not _UNSET:
        target.event_types = routing.event_types_check(event_types)
        fields.append("event_types")
    if payload_filter is not _UNSET:
        target.payload_filter = routing.payload_filter_check(payload_filter)
        fields.append("payload_filter")
    if permanent_statuses is not _UNSET:
        target.permanent_statuses = routing.permanent_statuses_check(permanent_statuses)
        fields.append("permanent_statuses")
    if fields:
        target.save(update_fields=[*fields, "updated_at"])
    return target


def target_rotate_secret(*, tenant_id, name: str) -> Target:
    """A new secret; the old one keeps signing alongside it for the rotation window."""
    with transaction.atomic():
        target = tenant_get_or_404(
            tenant_queryset(Target, tenant_id=tenant_id).select_for_update(),
            tenant_id=tenant_id,
            name=name,
        )
        target.previous_secret = target.secret
        target.previous_secret_expires_at = timezone.now() + timedelta(
            hours=conf.get("OUTBOX_SECRET_ROTATION_HOURS")
        )
        target.secret = secret_generate()
        target.save(
            update_fields=["secret", "previous_secret", "previous_secret_expires_at", "updated_at"]
        )
    return target


def target_pause(*, target: Target, reason: str = "paused by staff") -> bool:
    with transaction.atomic():
        paused = Target.objects.filter(pk=target.pk, paused_at__isnull=True).update(
            paused_at=timezone.now(), paused_reason=reason[:255], updated_at=timezone.now()
        )
        if paused:
            operator_events.target_paused(target_id=target.pk, reason=reason[:255])
    return bool(paused)


def target_resume(*, target: Target) -> bool:
    with transaction.atomic():
        resumed = Target.objects.filter(pk=target.pk, paused_at__isnull=False).update(
            paused_at=None, paused_reason="", updated_at=timezone.now()
        )
        if resumed:
            operator_events.target_recovered(target_id=target.pk)
    return bool(resumed)


def target_circuit_reset(*, target: Target) -> bool:
    with transaction.atomic():
        locked = Target.objects.select_for_update().get(pk=target.pk)
        if locked.circuit_state == Target.Circuit.CLOSED and not locked.circuit_failures:
            return False
        CircuitTransition.objects.create(
            tenant_id=locked.tenant_id,
            target=locked,
            from_state=locked.circuit_state,
            to_state=Target.Circuit.CLOSED,
            reason="reset by staff",
        )
        operator_events.circuit_changed(
            target_id=locked.pk,
            old=locked.circuit_state,
            new=Target.Circuit.CLOSED,
            reason="reset by staff",
        )
        Target.objects.filter(pk=locked.pk).update(
            circuit_state=Target.Circuit.CLOSED,
            circuit_failures=0,
            circuit_successes=0,
            circuit_opened_at=None,
            circuit_probe_until=None,
            updated_at=timezone.now(),
        )
    return True


def target_test_send(*, target: Target) -> OutboxEvent:
    """Admin's "send a test event": an ordinary event routed to this one target."""
    with transaction.atomic():
        return event_publish(
            tenant=target.tenant_id,
            event_type="outbox.test",
            topic="outbox",
            payload={"message": f"Test event for target {target.name}"},
            target=target.name,
        )


# --- Deliveries --------------------------------------------------------------------------------


def delivery_requeue(*, deliveries, include_delivered: bool = False) -> int:
    """Back to pending, due now, with a fresh attempt budget (dead/cancelled/retrying; and
    delivered ones when asked: a replay sends them again).

    A delivery a worker holds right now (live lease) is left alone: clearing its lease would
    let a second worker send it while the first is still on the wire."""
    now = timezone.now()
    if not include_delivered:
        deliveries = deliveries.exclude(status=Delivery.Status.DELIVERED)
    return deliveries.exclude(locked_until__gt=now).update(
        status=Delivery.Status.PENDING,
        attempts=0,
        next_attempt_at=now,
        locked_until=None,
        locked_by="",
        updated_at=now,
    )


def delivery_cancel(*, deliveries) -> int:
    """Stop trying (kept as evidence, never deleted). A try already on the wire finishes and
    its attempt is recorded, but it no longer changes the cancelled status."""
    now = timezone.now()
    return deliveries.filter(status__in=Delivery.OPEN_STATUSES).update(
        status=Delivery.Status.CANCELLED, last_error="cancelled by staff", updated_at=now
    )


def realtime_token_create(*, tenant_id, key_id, **scope):
    """A browser's realtime token (outbox.realtime.tokens): for apps that mint tokens without
    the HTTP endpoint, such as the demo page's server side."""
    from outbox.realtime import tokens

    return tokens.token_create(tenant_id=str(tenant_id), key_id=str(key_id), **scope)
