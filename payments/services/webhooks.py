"""Stripe webhooks: verify, store, then apply each event to the payment state machine.

One transaction per event: the stored event, the transition it causes and its outbox row
commit together. A processing error rolls back only the event's savepoint and is recorded
on the stored event, which Stripe (or payments_reprocess) then retries.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import traceback

import stripe
from django.conf import settings
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from core.errors import DomainError, ErrorKind
from payments import selectors
from payments.models import PaymentSession, PaymentStatus, StripeEvent
from payments.services.amounts import checkout_mismatches
from payments.services.state import (
    Outcome,
    payment_amount_mismatch,
    payment_intent_lock,
    payment_intent_record,
    payment_refund_apply,
    payment_transition,
)
from payments.stripe_api import stripe_id

logger = logging.getLogger(__name__)

# Checkout Session payment_status values that mean the money is there.
PAID = ("paid", "no_payment_required")

HANDLED_TYPES = (
    "checkout.session.completed",
    "checkout.session.async_payment_succeeded",
    "checkout.session.async_payment_failed",
    "checkout.session.expired",
    "charge.refunded",
    "refund.created",
    "refund.updated",
)


class WebhookSignatureError(DomainError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(code, message, kind=ErrorKind.INVALID)


class WebhookProcessingFailed(Exception):
    """The event is stored and its failure recorded; Stripe should send it again."""

    def __init__(self, event: StripeEvent, error: str):
        super().__init__(error)
        self.event = event
        self.error = error


# --- Receiving ------------------------------------------------------------------------------


def stripe_webhook_receive(*, body: bytes, signature: str | None) -> tuple[StripeEvent, bool]:
    """Verify, store, process, in one transaction (one commit per event).

    Returns (event, duplicate). Raises DomainError for bad input (nothing stored) and, after
    committing the stored event and its recorded failure, WebhookProcessingFailed.
    A second copy of the same event blocks on the unique index until the first commits,
    then finds it settled and is acknowledged as a duplicate.
    """
    try:
        stripe_signature_verify(body=body, header=signature)
        event = _parse_event(body)
    except DomainError as exc:
        _record_rejection(exc.code, f"{exc.message} ({len(body)} bytes)")
        raise
    with transaction.atomic():
        pk, created = _store(event, body.decode())
        # a row we just inserted is ours (locked by the insert): no need to read it back
        fresh = _fresh_event(pk, event) if created else None
        stored, duplicate, error = _process_stored(pk, force=False, fresh=fresh)
    if error:
        raise WebhookProcessingFailed(stored, error)
    return stored, duplicate


def stripe_signature_verify(*, body: bytes, header: str | None) -> None:
    """Accept the body if any configured secret signed it within the tolerance."""
    secrets = settings.STRIPE_WEBHOOK_SECRET
    if not secrets:
        raise DomainError(
            "webhook_not_configured",
            "STRIPE_WEBHOOK_SECRET is not set; the event was not processed.",
            kind=ErrorKind.UNAVAILABLE,
        )
    if not header:
        raise WebhookSignatureError(
            "missing_signature", "The Stripe-Signature header is missing; nothing processed."
        )
    tolerance = settings.STRIPE_WEBHOOK_TOLERANCE_SECONDS
    stale = False
    for secret in secrets:
        try:
            stripe.WebhookSignature.verify_header(body, header, secret, tolerance)
            return
        except stripe.SignatureVerificationError as exc:
            stale = stale or "tolerance" in str(exc)
        except UnicodeDecodeError:
            break
    if stale:
        raise WebhookSignatureError(
            "stale_signature",
            f"The signature's timestamp is older than {tolerance} s; nothing processed.",
        )
    raise WebhookSignatureError(
        "invalid_signature", "The Stripe-Signature does not match this body; nothing processed."
    )


def _parse_event(body: bytes) -> dict:
    try:
        event = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DomainError("malformed_event", "The body is not JSON.") from exc
    if not (
        isinstance(event, dict)
        and isinstance(event.get("id"), str)
        and event["id"]
        and isinstance(event.get("type"), str)
        and isinstance(event.get("data"), dict)
        and isinstance(event["data"].get("object"), dict)
        and isinstance(event.get("created"), int)
    ):
        raise DomainError(
            "malformed_event", "The body is not a Stripe event (id, type, created, data.object)."
        )
    return event


def _store(event: dict, raw_body: str) -> tuple[int, bool]:
    """INSERT … ON CONFLICT DO NOTHING (in the caller's transaction): (row id, newly stored)."""
    obj = event["data"]["object"]
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO payments_stripeevent (
                stripe_event_id, type, api_version, livemode, payload, raw_body,
                event_created_at, received_at, updated_at, status, result_note,
                processing_error, attempts, stripe_object_id, stripe_payment_intent_id
            ) VALUES (%s, %s, %s, %s, %s, %s, %s, now(), now(), 'received', '', '', 0, %s, %s)
            ON CONFLICT (stripe_event_id) DO NOTHING
            RETURNING id
            """,
            [
                event["id"][:255],
                event["type"][:100],
                str(event.get("api_version") or "")[:50],
                bool(event.get("livemode")),
                json.dumps(event),
                raw_body,
                dt.datetime.fromtimestamp(event["created"], tz=dt.UTC),
                str(obj.get("id") or "")[:255],
                _event_payment_intent(event),
            ],
        )
        row = cursor.fetchone()
    if row:
        return row[0], True
    return StripeEvent.objects.values_list("pk", flat=True).get(stripe_event_id=event["id"]), False


def _record_rejection(code: str, detail: str) -> None:
    """Count a refused webhook call (one upsert; bounded: one row per day and code)."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO payments_webhookrejection
                (day, code, count, first_seen_at, last_seen_at, last_detail)
            VALUES (CURRENT_DATE, %s, 1, now(), now(), %s)
            ON CONFLICT (day, code) DO UPDATE SET
                count = payments_webhookrejection.count + 1,
                last_seen_at = now(),
                last_detail = EXCLUDED.last_detail
            """,
            [code[:50], detail[:1000]],
        )


def _event_payment_intent(event: dict) -> str:
    return str(stripe_id(event["data"]["object"].get("payment_intent")) or "")[:255]


def _fresh_event(pk: int, event: dict) -> StripeEvent:
    obj = event["data"]["object"]
    return StripeEvent(
        pk=pk,
        stripe_event_id=event["id"],
        type=event["type"],
        payload=event,
        status=StripeEvent.Status.RECEIVED,
        attempts=0,
        stripe_object_id=str(obj.get("id") or "")[:255],
        stripe_payment_intent_id=_event_payment_intent(event),
    )


# --- Processing a stored event --------------------------------------------------------------


def stripe_event_process(*, event_pk: int, force: bool = False) -> tuple[StripeEvent, bool]:
    """Process one stored event. Returns (event, duplicate); raises WebhookProcessingFailed.

    `force` re-runs a settled event (reprocess): safe, since transitions are conditional and
    outbox keys are stable.
    """
    with transaction.atomic():
        stored, duplicate, error = _process_stored(event_pk, force=force)
    if error:
        raise WebhookProcessingFailed(stored, error)
    return stored, duplicate


def _process_stored(
    pk: int, *, force: bool, fresh: StripeEvent | None = None
) -> tuple[StripeEvent, bool, str | None]:
    """Inside the caller's transaction: lock the event row, process it in a savepoint.

    A processing error rolls the savepoint back (no partial transition, no outbox row) and is
    recorded on the event outside it, so the record survives; the caller answers 500.
    """
    event = fresh or StripeEvent.objects.select_for_update().get(pk=pk)
    if event.status in StripeEvent.SETTLED and not force:
        return event, True, None
    try:
        with transaction.atomic():
            status, note = _handle(event)
            _settle(event, status, note)
    except Exception as exc:
        error = _record_failure(pk, exc)
        event.refresh_from_db()
        return event, False, error
    return event, False, None


def _record_failure(pk: int, exc: Exception) -> str:
    """Mark a stored event failed, with its traceback (outside the rolled-back savepoint)."""
    error = "".join(traceback.format_exception(exc))[-4000:]
    StripeEvent.objects.filter(pk=pk).update(
        status=StripeEvent.Status.FAILED,
        processing_error=error,
        result_note=f"failed: {type(exc).__name__}: {exc}"[:1000],
        attempts=F("attempts") + 1,
        updated_at=timezone.now(),
    )
    logger.exception("stripe event %s failed", pk, exc_info=exc)
    return error


def _settle(event: StripeEvent, status: str, note: str) -> None:
    event.status = status
    event.result_note = note[:1000]
    event.processing_error = ""
    event.processed_at = timezone.now()
    event.attempts += 1
    event.save(
        update_fields=[
            "status",
            "result_note",
            "processing_error",
            "processed_at",
            "attempts",
            "tenant",
            "payment_session",
            "stripe_payment_intent_id",
            "updated_at",
        ]
    )


def _handle(event: StripeEvent) -> Outcome:
    obj = event.payload["data"]["object"]
    if event.type.startswith("checkout.session.") and event.type in HANDLED_TYPES:
        return _handle_checkout(event, obj)
    if event.type in ("charge.refunded", "refund.created", "refund.updated"):
        return _handle_refund(event, obj)
    return StripeEvent.Status.IGNORED, f"{event.type} is not handled"


def _attach(event: StripeEvent, ps: PaymentSession | None) -> PaymentSession | None:
    """Link the event to its (locked) payment: the tenant is known from here on."""
    if ps is None:
        return None
    event.payment_session = ps
    event.tenant_id = ps.tenant_id
    return ps


def _handle_checkout(event: StripeEvent, obj: dict) -> Outcome:
    payment_intent_lock(obj.get("payment_intent"))
    ps = _attach(event, selectors.payment_session_for_checkout(checkout_object=obj, lock=True))
    if ps is None:
        return StripeEvent.Status.IGNORED, f"checkout session {obj.get('id')} is not ours"
    kind = event.type.removeprefix("checkout.session.")
    pi = stripe_id(obj.get("payment_intent"))
    with_pi = {"stripe_payment_intent_id": pi} if pi and pi != ps.stripe_payment_intent_id else {}
    if kind in ("completed", "async_payment_succeeded"):
        # what Stripe charged must be what the session was created for, paid yet or not
        mismatches = checkout_mismatches(ps, obj)
        if mismatches:
            payment_intent_record(ps, pi)  # refunds of it find the payment
            return payment_amount_mismatch(
                ps, mismatches, source=event.type, stripe_event_id=event.stripe_event_id
            )
    if kind == "completed":
        if obj.get("payment_status") not in PAID:
            payment_intent_record(ps, pi)  # refunds find the payment by it
            return (
                StripeEvent.Status.PROCESSED,
                f"checkout completed, payment {obj.get('payment_status')}: waiting for the "
                "async payment result",
            )
        return payment_complete(ps, source=event.type, extra=with_pi)
    if kind == "async_payment_succeeded":
        return payment_complete(ps, source=event.type, extra=with_pi)
    if kind == "async_payment_failed":
        return payment_transition(ps, PaymentStatus.FAILED, source=event.type)
    if kind == "expired":
        return payment_transition(ps, PaymentStatus.EXPIRED, source=event.type)
    return StripeEvent.Status.IGNORED, f"{event.type} is not handled"


def _refund_entry(refund: dict) -> dict[str, dict]:
    return {str(refund["id"]): {"amount": int(refund["amount"]), "status": refund.get("status")}}


def _handle_refund(event: StripeEvent, obj: dict) -> Outcome:
    refunds: dict[str, dict] = {}
    if event.type == "charge.refunded":
        cumulative: int | None = int(obj["amount_refunded"])
        for refund in (obj.get("refunds") or {}).get("data") or []:
            refunds.update(_refund_entry(refund))
    else:  # refund.created / refund.updated: one refund, cumulative amount unknown
        cumulative = None
        refunds = _refund_entry(obj)
    pi = stripe_id(obj.get("payment_intent")) or ""
    event.stripe_payment_intent_id = pi
    payment_intent_lock(pi)
    ps = _attach(
        event,
        selectors.payment_session_for_payment_intent(
            payment_intent_id=pi, metadata=obj.get("metadata"), lock=True
        ),
    )
    return payment_refund_apply(ps, cumulative=cumulative, refunds=refunds, payment_intent_id=pi)


# --- Completion replays what waited for it --------------------------------------------------


def payment_complete(ps: PaymentSession, *, source: str, extra: dict | None = None) -> Outcome:
    """Complete a locked payment (webhook or reconcile), then apply the refunds that arrived
    before the completion, in the same transaction."""
    before = ps.status
    status, note = payment_transition(ps, PaymentStatus.COMPLETED, source=source, extra=extra)
    if ps.status != before:  # applied just now
        replayed = _replay_deferred(ps)
        if replayed:
            note += f"; replayed {replayed} deferred event(s)"
    return status, note


def _replay_deferred(ps: PaymentSession) -> int:
    """Apply refunds that arrived before the completion, in Stripe's event order.

    SKIP LOCKED: an event being (re)processed right now by someone else applies itself once
    our transaction commits (it waits for this payment's row lock). Each replay has its own
    savepoint: a deferred event that fails is recorded as failed and does not block the
    completion (payments_reprocess --failed re-runs it).
    """
    count = 0
    events = selectors.stripe_events_deferred_for(payment_session=ps).select_for_update(
        skip_locked=True
    )
    for event in events:
        try:
            with transaction.atomic():
                status, note = _handle(event)
                _settle(event, status, f"replayed after completion: {note}")
        except Exception as exc:
            _record_failure(event.pk, exc)
        count += 1
    return count
