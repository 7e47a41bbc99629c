"""Catching up: re-read pending payments from Stripe (lost webhooks) and re-run stored events.

Both are idempotent (conditional transitions, stable outbox keys), so running them again, or
at the same time as a webhook, changes nothing twice.
"""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from core.errors import DomainError
from payments import selectors
from payments.models import PaymentSession, PaymentStatus, StripeEvent
from payments.services.amounts import checkout_mismatches
from payments.services.state import (
    Outcome,
    payment_amount_mismatch,
    payment_intent_lock,
    payment_intent_record,
    payment_session_lock,
    payment_transition,
)
from payments.services.webhooks import (
    PAID,
    WebhookProcessingFailed,
    payment_complete,
    stripe_event_process,
)
from payments.stripe_api import stripe_call


def payment_session_reconcile(*, payment_session: PaymentSession) -> Outcome:
    """Re-read the Checkout Session from Stripe and apply what it says (covers lost webhooks).

    Raises DomainError when Stripe cannot be asked (the stripe_* codes of payments.stripe_api).
    """
    checkout = stripe_call(
        "checkout.sessions.retrieve",
        lambda client: client.v1.checkout.sessions.retrieve(
            payment_session.stripe_checkout_session_id,
            params={"expand": ["line_items"]},  # the price is checked too
        ),
        tenant_id=payment_session.tenant_id,
        payment_session_id=payment_session.pk,
    ).to_dict()
    with transaction.atomic():
        payment_intent_lock(checkout.get("payment_intent"))
        ps = payment_session_lock(payment_session)
        PaymentSession.objects.filter(pk=ps.pk).update(last_reconciled_at=timezone.now())
        payment_intent_record(ps, checkout.get("payment_intent"))
        status, payment_status = checkout.get("status"), checkout.get("payment_status")
        if status == "complete":
            mismatches = checkout_mismatches(ps, checkout)
            if mismatches:
                return payment_amount_mismatch(ps, mismatches, source="reconcile")
        if status == "complete" and payment_status in PAID:
            return payment_complete(ps, source="reconcile")
        if status == "expired":
            return payment_transition(ps, PaymentStatus.EXPIRED, source="reconcile")
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
    """Bring pending sessions older than the threshold up to date from Stripe.

    Stops early (counts["stopped"]) when asked to, or when the Stripe circuit opens: the next
    run continues where this one stopped."""
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
        except DomainError as exc:
            counts["errors"] += 1
            note = f"error: {exc.code}"
            if exc.code == "stripe_circuit_open":
                if progress:
                    progress(ps, note)
                counts["stopped"] = True
                break  # Stripe is down: the next run continues
        else:
            counts["changed" if note.startswith("applied") else "unchanged"] += 1
        if progress:
            progress(ps, note)
    return counts


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
