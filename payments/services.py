"""Payment writes: checkout creation, the webhook state machine, reconcile and reprocess.

Every status change goes through `_transition` / `_apply_refund`: checked against
payments.transitions, applied by a conditional UPDATE (`WHERE status IN (...)`) on a locked
row, and published to the outbox in the same transaction.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import traceback
import uuid
from collections.abc import Callable

import stripe
from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import F
from django.utils import timezone

from assessments.models import AssessmentSession
from core.api.errors import ApiError
from outbox.services import event_publish
from payments import selectors
from payments.models import PaymentSession, PaymentStatus, StripeEvent
from payments.stripe_api import stripe_call
from payments.transitions import (
    REFUND_WAITS_IN,
    REFUNDABLE,
    allowed_sources,
    is_allowed,
    reachable_from,
)
from tenants.scoping import tenant_queryset

logger = logging.getLogger(__name__)

# uuid5 namespace: a client's Idempotency-Key → our PaymentSession id (per tenant).
_IDEMPOTENCY_NAMESPACE = uuid.UUID("6f1c5a8e-2b7d-4c1e-9a55-0f3e2d1c4b7a")
PAID = ("paid", "no_payment_required")
Outcome = tuple[str, str]  # (StripeEvent.Status, note)


def stripe_idempotency_key(payment_session_id) -> str:
    """The Idempotency-Key sent to Stripe: derived from our id, so a retry never makes two."""
    return f"atlas-checkout-{payment_session_id}"


# --- Checkout -------------------------------------------------------------------------------


def _fingerprint(data: dict) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def payment_checkout_create(
    *,
    tenant_id,
    email: str,
    first_name: str,
    success_url: str,
    cancel_url: str,
    form_data: dict | None = None,
    assessment_session_id=None,
    price_id: str | None = None,
    amount: int | None = None,
    currency: str | None = None,
    product_name: str = "Assessment",
    idempotency_key: str | None = None,
) -> tuple[PaymentSession, bool]:
    """Create a Stripe Checkout Session, then our row. Returns (row, replayed).

    Stripe is called first, outside any transaction: when it fails no row exists. Our id is
    chosen before the call (derived from the client's Idempotency-Key when given), and the
    Idempotency-Key sent to Stripe is derived from it, so a retried request gets the same
    Checkout Session back from Stripe and the same row back from us.
    """
    form_data = form_data or {}
    request = {
        "email": email,
        "first_name": first_name,
        "form_data": form_data,
        "assessment_session_id": str(assessment_session_id or ""),
        "price_id": price_id,
        "amount": amount,
        "currency": currency,
        "success_url": success_url,
        "cancel_url": cancel_url,
        "product_name": product_name,
    }
    fingerprint = _fingerprint(request)
    if idempotency_key:
        ps_id = uuid.uuid5(_IDEMPOTENCY_NAMESPACE, f"{tenant_id}:{idempotency_key}")
        existing = tenant_queryset(PaymentSession, tenant_id=tenant_id).filter(pk=ps_id).first()
        if existing is not None:
            return _replay(existing, fingerprint), True
    else:
        ps_id = uuid.uuid4()

    if assessment_session_id is not None and not (
        tenant_queryset(AssessmentSession, tenant_id=tenant_id)
        .filter(pk=assessment_session_id)
        .exists()
    ):
        raise ApiError(
            "assessment_session_not_found",
            "sessionId does not name an assessment session of this tenant.",
            status_code=404,
            details={"field": "sessionId"},
        )

    metadata = {
        "payment_session_id": str(ps_id),
        "tenant_id": str(tenant_id),
        "assessment_session_id": str(assessment_session_id or ""),
    }
    if price_id:
        line_item = {"price": price_id, "quantity": 1}
    else:
        line_item = {
            "price_data": {
                "currency": currency,
                "unit_amount": amount,
                "product_data": {"name": product_name},
            },
            "quantity": 1,
        }
    params = {
        "mode": "payment",
        "client_reference_id": str(ps_id),
        "customer_email": email,
        "success_url": success_url,
        "cancel_url": cancel_url,
        "line_items": [line_item],
        "metadata": metadata,
        # copied onto the PaymentIntent, so refund events can name us too
        "payment_intent_data": {"metadata": metadata},
    }
    checkout = stripe_call(
        "checkout.sessions.create",
        lambda client: client.v1.checkout.sessions.create(
            params=params, options={"idempotency_key": stripe_idempotency_key(ps_id)}
        ),
        tenant_id=tenant_id,
        payment_session_id=ps_id,
    ).to_dict()

    amount_total = checkout.get("amount_total")
    try:
        with transaction.atomic():
            row, created = PaymentSession.objects.get_or_create(
                pk=ps_id,
                defaults={
                    "tenant_id": tenant_id,
                    "assessment_session_id": assessment_session_id,
                    "email": email,
                    "first_name": first_name,
                    "form_data": form_data,
                    "price_id": price_id,
                    "amount": amount_total if amount_total is not None else amount,
                    "currency": (checkout.get("currency") or currency or "").lower(),
                    "stripe_checkout_session_id": checkout["id"],
                    "stripe_payment_intent_id": _object_id(checkout.get("payment_intent")),
                    "livemode": bool(checkout.get("livemode")),
                    "checkout_url": checkout.get("url") or "",
                    "success_url": success_url,
                    "cancel_url": cancel_url,
                    "idempotency_key": idempotency_key,
                    "request_fingerprint": fingerprint,
                },
            )
    except IntegrityError:
        # A bad row would be our bug (input is validated): leave nothing behind at Stripe either.
        _expire_quietly(checkout["id"])
        raise
    if not created:  # a concurrent request with the same Idempotency-Key won the insert
        return _replay(row, fingerprint), True
    return row, False


def _replay(row: PaymentSession, fingerprint: str) -> PaymentSession:
    if row.request_fingerprint and row.request_fingerprint != fingerprint:
        raise ApiError(
            "idempotency_key_reused",
            "This Idempotency-Key was used for a different checkout request.",
            status_code=422,
        )
    return row


def _expire_quietly(checkout_session_id: str) -> None:
    try:
        stripe_call(
            "checkout.sessions.expire",
            lambda client: client.v1.checkout.sessions.expire(checkout_session_id),
        )
    except ApiError:
        logger.warning("could not expire orphan checkout session %s", checkout_session_id)


def _object_id(value) -> str | None:
    """Stripe fields can be an id or an expanded object."""
    if isinstance(value, dict):
        return value.get("id")
    return value or None


# --- Transitions ----------------------------------------------------------------------------


def _payload(ps: PaymentSession, **extra) -> dict:
    return {
        "paymentSessionId": str(ps.pk),
        "assessmentSessionId": str(ps.assessment_session_id) if ps.assessment_session_id else None,
        "status": ps.status,
        "amount": ps.amount,
        "amountRefunded": ps.amount_refunded,
        "currency": ps.currency,
        "email": ps.email,
        "stripeCheckoutSessionId": ps.stripe_checkout_session_id,
        "stripePaymentIntentId": ps.stripe_payment_intent_id,
        **extra,
    }


_EVENT_FOR = {
    PaymentStatus.COMPLETED: "payment.completed",
    PaymentStatus.FAILED: "payment.failed",
    PaymentStatus.EXPIRED: "payment.expired",
}


def _lock(ps: PaymentSession) -> PaymentSession:
    """Re-read under a row lock: events of one payment are applied one at a time."""
    return PaymentSession.objects.select_for_update().get(pk=ps.pk)


def _lock_payment_intent(payment_intent) -> None:
    """Serialise everything about one PaymentIntent (transaction-scoped advisory lock).

    A refund event may only know the PaymentIntent while the completion that records it on
    our row is in flight: without this lock the refund could find no payment and be deferred
    after the completion had already replayed the deferred events. Order: this lock first,
    then the PaymentSession row lock.
    """
    pi = _object_id(payment_intent)
    if pi:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", [f"pi:{pi}"])


def _record_payment_intent(ps: PaymentSession, payment_intent) -> None:
    pi = _object_id(payment_intent)
    if pi and ps.stripe_payment_intent_id != pi:
        PaymentSession.objects.filter(pk=ps.pk).update(
            stripe_payment_intent_id=pi, updated_at=timezone.now()
        )
        ps.stripe_payment_intent_id = pi


def _transition(
    ps: PaymentSession, target: str, *, source: str, extra: dict | None = None
) -> Outcome:
    """Apply `target` to a locked row if the table allows it; publish; replay deferred.

    `extra` fields (e.g. the PaymentIntent id) are written by the same UPDATE."""
    if ps.status == target:
        return StripeEvent.Status.PROCESSED, f"no change: already {target}"
    if ps.status in reachable_from(target):  # a late copy of a fact already superseded
        return StripeEvent.Status.PROCESSED, f"no change: already {ps.status} (past {target})"
    if not is_allowed(ps.status, target):
        return StripeEvent.Status.IGNORED, f"{ps.status} → {target} is not allowed; ignored"
    now = timezone.now()
    fields = {**(extra or {}), "status": target, "status_changed_at": now, "updated_at": now}
    if target == PaymentStatus.COMPLETED:
        fields["completed_at"] = now
    updated = PaymentSession.objects.filter(pk=ps.pk, status__in=allowed_sources(target)).update(
        **fields
    )
    if not updated:  # cannot happen under the row lock; kept as the database's word
        return StripeEvent.Status.IGNORED, f"{ps.status} → {target} lost a race; ignored"
    previous = ps.status
    for name, value in fields.items():
        setattr(ps, name, value)
    event_type = _EVENT_FOR[target]
    event_publish(
        tenant=ps.tenant_id,
        event_type=event_type,
        topic="payments",
        payload=_payload(ps, previousStatus=previous, source=source),
        idempotency_key=f"{event_type}:{ps.pk}",
        ordering_key=str(ps.pk),
    )
    note = f"applied: {previous} → {target}"
    if target == PaymentStatus.COMPLETED:
        replayed = _replay_deferred(ps)
        if replayed:
            note += f"; replayed {replayed} deferred event(s)"
    return StripeEvent.Status.PROCESSED, note


def _apply_refund(
    ps: PaymentSession | None,
    *,
    cumulative: int | None,
    refunds: dict[str, dict],
    payment_intent_id: str,
) -> Outcome:
    if ps is None:
        return (
            StripeEvent.Status.DEFERRED,
            f"no payment with payment intent {payment_intent_id or '?'} yet; "
            "applied when its checkout completes",
        )
    if ps.status in REFUND_WAITS_IN:
        return StripeEvent.Status.DEFERRED, f"payment is {ps.status}; applied after completion"
    if ps.status not in REFUNDABLE and ps.status != PaymentStatus.REFUNDED:
        return StripeEvent.Status.IGNORED, f"a refund for a {ps.status} payment; ignored"

    merged = {**ps.refunds, **refunds}
    counted = sum(r["amount"] for r in merged.values() if r.get("status") == "succeeded")
    new_amount = max(ps.amount_refunded, cumulative or 0, counted)
    if new_amount == ps.amount_refunded:
        if merged != ps.refunds:
            PaymentSession.objects.filter(pk=ps.pk).update(
                refunds=merged, updated_at=timezone.now()
            )
        return StripeEvent.Status.PROCESSED, f"no change: {ps.amount_refunded} refunded"
    if ps.status == PaymentStatus.REFUNDED:
        return StripeEvent.Status.IGNORED, "already fully refunded; ignored"

    full = ps.amount is not None and new_amount >= ps.amount
    target = PaymentStatus.REFUNDED if full else PaymentStatus.PARTIALLY_REFUNDED
    # A further partial refund keeps partially_refunded and only raises the amount.
    sources = set(allowed_sources(target)) | ({target} if target in REFUNDABLE else set())
    now = timezone.now()
    updated = PaymentSession.objects.filter(
        pk=ps.pk, status__in=sorted(sources), amount_refunded__lt=new_amount
    ).update(
        status=target,
        amount_refunded=new_amount,
        refunds=merged,
        status_changed_at=now if target != ps.status else F("status_changed_at"),
        updated_at=now,
    )
    if not updated:
        return StripeEvent.Status.IGNORED, "refund lost a race; ignored"
    previous, previous_amount = ps.status, ps.amount_refunded
    ps.status, ps.amount_refunded, ps.refunds = target, new_amount, merged
    event_publish(
        tenant=ps.tenant_id,
        event_type="payment.refunded",
        topic="payments",
        payload=_payload(ps, previousStatus=previous, fullyRefunded=full),
        # one event per refunded total: a second partial refund is a new fact
        idempotency_key=f"payment.refunded:{ps.pk}:{new_amount}",
        ordering_key=str(ps.pk),
    )
    return (
        StripeEvent.Status.PROCESSED,
        f"applied: {previous} → {target} (refunded {previous_amount} → {new_amount})",
    )


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


# --- Webhook events -------------------------------------------------------------------------


class WebhookSignatureError(ApiError):
    pass


def stripe_signature_verify(*, body: bytes, header: str | None) -> None:
    """Accept the body if any configured secret signed it within the tolerance."""
    secrets = settings.STRIPE_WEBHOOK_SECRET
    if not secrets:
        raise ApiError(
            "webhook_not_configured",
            "STRIPE_WEBHOOK_SECRET is not set; the event was not processed.",
            status_code=503,
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
        raise ApiError("malformed_event", "The body is not JSON.") from exc
    if not (
        isinstance(event, dict)
        and isinstance(event.get("id"), str)
        and event["id"]
        and isinstance(event.get("type"), str)
        and isinstance(event.get("data"), dict)
        and isinstance(event["data"].get("object"), dict)
        and isinstance(event.get("created"), int)
    ):
        raise ApiError(
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


def stripe_webhook_receive(*, body: bytes, signature: str | None) -> tuple[StripeEvent, bool]:
    """Verify, store, process, in one transaction (one commit per event).

    Returns (event, duplicate). Raises ApiError for bad input (nothing stored) and, after
    committing the stored event and its recorded failure, WebhookProcessingFailed.
    A second copy of the same event blocks on the unique index until the first commits,
    then finds it settled and is acknowledged as a duplicate.
    """
    try:
        stripe_signature_verify(body=body, header=signature)
        event = _parse_event(body)
    except ApiError as exc:
        _record_rejection(exc.error_code, f"{exc.message} ({len(body)} bytes)")
        raise
    with transaction.atomic():
        pk, created = _store(event, body.decode())
        # a row we just inserted is ours (locked by the insert): no need to read it back
        fresh = _fresh_event(pk, event) if created else None
        stored, duplicate, error = _process_stored(pk, force=False, fresh=fresh)
    if error:
        raise WebhookProcessingFailed(stored, error)
    return stored, duplicate


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


class WebhookProcessingFailed(Exception):
    def __init__(self, event: StripeEvent, error: str):
        super().__init__(error)
        self.event = event
        self.error = error


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


def _event_payment_intent(event: dict) -> str:
    return str(_object_id(event["data"]["object"].get("payment_intent")) or "")[:255]


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


def _attach(event: StripeEvent, ps: PaymentSession | None) -> PaymentSession | None:
    """Link the event to its (locked) payment: the tenant is known from here on."""
    if ps is None:
        return None
    event.payment_session = ps
    event.tenant_id = ps.tenant_id
    return ps


def _handle_checkout(event: StripeEvent, obj: dict) -> Outcome:
    _lock_payment_intent(obj.get("payment_intent"))
    ps = _attach(event, selectors.payment_session_for_checkout(checkout_object=obj, lock=True))
    if ps is None:
        return StripeEvent.Status.IGNORED, f"checkout session {obj.get('id')} is not ours"
    kind = event.type.removeprefix("checkout.session.")
    pi = _object_id(obj.get("payment_intent"))
    with_pi = {"stripe_payment_intent_id": pi} if pi and pi != ps.stripe_payment_intent_id else {}
    if kind == "completed":
        if obj.get("payment_status") not in PAID:
            _record_payment_intent(ps, pi)  # refunds find the payment by it
            return (
                StripeEvent.Status.PROCESSED,
                f"checkout completed, payment {obj.get('payment_status')}: waiting for the "
                "async payment result",
            )
        return _transition(ps, PaymentStatus.COMPLETED, source=event.type, extra=with_pi)
    if kind == "async_payment_succeeded":
        return _transition(ps, PaymentStatus.COMPLETED, source=event.type, extra=with_pi)
    if kind == "async_payment_failed":
        return _transition(ps, PaymentStatus.FAILED, source=event.type)
    if kind == "expired":
        return _transition(ps, PaymentStatus.EXPIRED, source=event.type)
    return StripeEvent.Status.IGNORED, f"{event.type} is not handled"


def _refund_entry(refund: dict) -> dict[str, dict]:
    return {str(refund["id"]): {"amount": int(refund["amount"]), "status": refund.get("status")}}


def _handle_refund(event: StripeEvent, obj: dict) -> Outcome:
    if event.type == "charge.refunded":
        cumulative = int(obj["amount_refunded"])
        refunds = {}
        for refund in (obj.get("refunds") or {}).get("data") or []:
            refunds.update(_refund_entry(refund))
    else:  # refund.created / refund.updated: one refund, cumulative amount unknown
        cumulative = None
        refunds = _refund_entry(obj)
    pi = _object_id(obj.get("payment_intent")) or ""
    event.stripe_payment_intent_id = pi
    _lock_payment_intent(pi)
    ps = _attach(
        event,
        selectors.payment_session_for_payment_intent(
            payment_intent_id=pi, metadata=obj.get("metadata"), lock=True
        ),
    )
    return _apply_refund(ps, cumulative=cumulative, refunds=refunds, payment_intent_id=pi)


HANDLED_TYPES = (
    "checkout.session.completed",
    "checkout.session.async_payment_succeeded",
    "checkout.session.async_payment_failed",
    "checkout.session.expired",
    "charge.refunded",
    "refund.created",
    "refund.updated",
)


def _handle(event: StripeEvent) -> Outcome:
    obj = event.payload["data"]["object"]
    if event.type.startswith("checkout.session.") and event.type in HANDLED_TYPES:
        return _handle_checkout(event, obj)
    if event.type in ("charge.refunded", "refund.created", "refund.updated"):
        return _handle_refund(event, obj)
    return StripeEvent.Status.IGNORED, f"{event.type} is not handled"


# --- Reprocess ------------------------------------------------------------------------------


def stripe_events_reprocess(
    *,
    ids: list[str] | None = None,
    failed_only: bool = False,
    types: list[str] | None = None,
    progress: Callable[[StripeEvent, str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict:
    """Re-run stored events (idempotent). Returns counts per resulting status."""
    counts = {"total": 0, "failed": 0}
    pks = list(
        selectors.stripe_events_for_reprocess(
            ids=ids, failed_only=failed_only, types=types
        ).values_list("pk", flat=True)
    )
    for pk in pks:
        if should_stop and should_stop():
            counts["stopped"] = True
            break
        counts["total"] += 1
        try:
            event, _ = stripe_event_process(event_pk=pk, force=True)
        except WebhookProcessingFailed as exc:
            event = exc.event
            counts["failed"] += 1
        else:
            counts[event.status] = counts.get(event.status, 0) + 1
        if progress:
            progress(event, event.result_note)
    return counts


# --- Reconcile ------------------------------------------------------------------------------


def payment_session_reconcile(*, payment_session: PaymentSession) -> Outcome:
    """Re-read the Checkout Session from Stripe and apply what it says (covers lost webhooks)."""
    checkout = stripe_call(
        "checkout.sessions.retrieve",
        lambda client: client.v1.checkout.sessions.retrieve(
            payment_session.stripe_checkout_session_id
        ),
        tenant_id=payment_session.tenant_id,
        payment_session_id=payment_session.pk,
    ).to_dict()
    with transaction.atomic():
        _lock_payment_intent(checkout.get("payment_intent"))
        ps = _lock(payment_session)
        PaymentSession.objects.filter(pk=ps.pk).update(last_reconciled_at=timezone.now())
        _record_payment_intent(ps, checkout.get("payment_intent"))
        status, payment_status = checkout.get("status"), checkout.get("payment_status")
        if status == "complete" and payment_status in PAID:
            return _transition(ps, PaymentStatus.COMPLETED, source="reconcile")
        if status == "expired":
            return _transition(ps, PaymentStatus.EXPIRED, source="reconcile")
        return (
            StripeEvent.Status.PROCESSED,
            f"no change: Stripe says status={status}, payment_status={payment_status}",
        )


def payments_reconcile(
    *,
    older_than_minutes: int | None = None,
    limit: int | None = None,
    progress: Callable[[PaymentSession, str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict:
    """Bring pending sessions older than the threshold up to date from Stripe."""
    older_than = older_than_minutes or settings.PAYMENTS_RECONCILE_OLDER_THAN_MINUTES
    limit = limit or settings.PAYMENTS_RECONCILE_BATCH_SIZE
    counts = {"checked": 0, "changed": 0, "unchanged": 0, "errors": 0}
    for ps in list(
        selectors.payment_sessions_due_for_reconcile(older_than_minutes=older_than, limit=limit)
    ):
        if should_stop and should_stop():
            counts["stopped"] = True
            break
        counts["checked"] += 1
        try:
            _status, note = payment_session_reconcile(payment_session=ps)
        except ApiError as exc:
            counts["errors"] += 1
            note = f"error: {exc.error_code}"
            if exc.error_code == "stripe_circuit_open":
                if progress:
                    progress(ps, note)
                counts["stopped"] = True
                break  # Stripe is down: the next run continues
        else:
            counts["changed" if note.startswith("applied") else "unchanged"] += 1
        if progress:
            progress(ps, note)
    return counts
