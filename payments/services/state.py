"""The payment state machine applied to rows.

Every status change goes through `payment_transition` / `payment_refund_apply`: checked against
payments.transitions, applied by a conditional UPDATE (`WHERE status IN (...)`) on a locked
row, and published to the outbox in the same transaction. Completing a payment also replays
the refunds that waited for it: see `webhooks.payment_complete`.
"""

from __future__ import annotations

from django.db import connection
from django.db.models import F
from django.utils import timezone

from outbox.services import event_publish
from payments.models import FailureReason, PaymentSession, PaymentStatus, StripeEvent
from payments.services.amounts import Mismatches, mismatch_summary
from payments.stripe_api import stripe_id
from payments.transitions import (
    REFUND_WAITS_IN,
    REFUNDABLE,
    allowed_sources,
    is_allowed,
    reachable_from,
)

Outcome = tuple[str, str]  # (StripeEvent.Status, note)

_EVENT_FOR: dict[str, str] = {
    PaymentStatus.COMPLETED: "payment.completed",
    PaymentStatus.FAILED: "payment.failed",
    PaymentStatus.EXPIRED: "payment.expired",
}


def _payload(ps: PaymentSession, **extra) -> dict:
    return {
        "paymentSessionId": str(ps.pk),
        "assessmentSessionId": str(ps.assessment_session_id) if ps.assessment_session_id else None,
        "status": ps.status,
        "failureReason": ps.failure_reason or None,
        # what the session was created for (and, once completed, what Stripe confirmed)
        "priceId": ps.price_id,
        "amount": ps.amount,
        "amountRefunded": ps.amount_refunded,
        "currency": ps.currency,
        "email": ps.email,
        "stripeCheckoutSessionId": ps.stripe_checkout_session_id,
        "stripePaymentIntentId": ps.stripe_payment_intent_id,
        **extra,
    }


def payment_session_lock(ps: PaymentSession) -> PaymentSession:
    """Re-read under a row lock: events of one payment are applied one at a time."""
    return PaymentSession.objects.select_for_update().get(pk=ps.pk)


def payment_intent_lock(payment_intent) -> None:
    """Serialise everything about one PaymentIntent (transaction-scoped advisory lock).

    A refund event may only know the PaymentIntent while the completion that records it on
    our row is in flight: without this lock the refund could find no payment and be deferred
    after the completion had already replayed the deferred events. Order: this lock first,
    then the PaymentSession row lock.
    """
    pi = stripe_id(payment_intent)
    if pi:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", [f"pi:{pi}"])


def payment_intent_record(ps: PaymentSession, payment_intent) -> None:
    pi = stripe_id(payment_intent)
    if pi and ps.stripe_payment_intent_id != pi:
        PaymentSession.objects.filter(pk=ps.pk).update(
            stripe_payment_intent_id=pi, updated_at=timezone.now()
        )
        ps.stripe_payment_intent_id = pi


def payment_transition(
    ps: PaymentSession, target: str, *, source: str, extra: dict | None = None
) -> Outcome:
    """Apply `target` to a locked row if the table allows it, and publish it.

    `extra` fields (e.g. the PaymentIntent id) are written by the same UPDATE. `ps` is
    updated in place only when the transition was applied."""
    if ps.status == target:
        return StripeEvent.Status.PROCESSED, f"no change: already {target}"
    if ps.status in reachable_from(target):  # a late copy of a fact already superseded
        return StripeEvent.Status.PROCESSED, f"no change: already {ps.status} (past {target})"
    if not is_allowed(ps.status, target):
        return StripeEvent.Status.IGNORED, f"{ps.status} → {target} is not allowed; ignored"
    if target == PaymentStatus.COMPLETED and ps.failure_reason:
        return (
            StripeEvent.Status.IGNORED,
            f"failed ({ps.failure_reason}): never completed; ignored",
        )
    now = timezone.now()
    fields = {**(extra or {}), "status": target, "status_changed_at": now, "updated_at": now}
    rows = PaymentSession.objects.filter(pk=ps.pk, status__in=allowed_sources(target))
    if target == PaymentStatus.COMPLETED:
        fields["completed_at"] = now
        rows = rows.filter(failure_reason="")  # the database's word too (and a CHECK)
    updated = rows.update(**fields)
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
    return StripeEvent.Status.PROCESSED, f"applied: {previous} → {target}"


def payment_refund_apply(
    ps: PaymentSession | None,
    *,
    cumulative: int | None,
    refunds: dict[str, dict],
    payment_intent_id: str,
) -> Outcome:
    """Raise the refunded amount (monotonic) of a locked row; defer while it is not paid."""
    if ps is None:
        return (
            StripeEvent.Status.DEFERRED,
            f"no payment with payment intent {payment_intent_id or '?'} yet; "
            "applied when its checkout completes",
        )
    if ps.failure_reason:  # it will never complete: waiting would be forever
        return (
            StripeEvent.Status.IGNORED,
            f"a refund for a payment failed ({ps.failure_reason}); ignored",
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


def payment_amount_mismatch(
    ps: PaymentSession, mismatches: Mismatches, *, source: str, stripe_event_id: str = ""
) -> Outcome:
    """Stripe reported another price, amount or currency than the locked payment was created
    for: it ends `failed` with reason amount_mismatch (never completed afterwards: the
    completion is refused in Python, in its UPDATE and by a CHECK) and an alert
    `payment.amount_mismatch` goes through the outbox. A payment already past pending/failed
    keeps its status; the alert still goes out."""
    summary = mismatch_summary(mismatches)
    reason = FailureReason.AMOUNT_MISMATCH
    if ps.failure_reason == reason:
        return StripeEvent.Status.PROCESSED, f"no change: already failed ({reason}): {summary}"
    if ps.status == PaymentStatus.PENDING:
        status, note = payment_transition(
            ps, PaymentStatus.FAILED, source=source, extra={"failure_reason": reason}
        )
    elif ps.status == PaymentStatus.FAILED:  # an async payment failed before: now ours too
        PaymentSession.objects.filter(pk=ps.pk, status=PaymentStatus.FAILED).update(
            failure_reason=reason, updated_at=timezone.now()
        )
        ps.failure_reason = reason
        status, note = StripeEvent.Status.PROCESSED, "applied: failed → failed"
    else:
        status, note = StripeEvent.Status.IGNORED, f"{ps.status} payment: status kept"
    event_publish(
        tenant=ps.tenant_id,
        event_type="payment.amount_mismatch",
        topic="payments",
        payload=_payload(
            ps, source=source, stripeEventId=stripe_event_id or None, mismatches=mismatches
        ),
        idempotency_key=f"payment.amount_mismatch:{ps.pk}",
        ordering_key=str(ps.pk),
    )
    return status, f"{reason}: {summary}; {note}; alerted"
