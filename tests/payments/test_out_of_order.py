"""Refunds that arrive before the completion are recorded (deferred) and applied after it, in
Stripe's event order: every arrival order ends in the same state with the same outbox facts."""

from __future__ import annotations

import itertools
import time

import pytest

from outbox.models import OutboxEvent
from payments.models import PaymentSession, StripeEvent
from tests.payments.factories import (
    PaymentSessionFactory,
    charge_refunded,
    make_event,
    post_event,
)

pytestmark = pytest.mark.django_db
PI = "pi_out_of_order"


def _events(payment):
    """Stripe's order: completed (t0), partial refund (t0+10), rest refunded (t0+20)."""
    t0 = int(time.time()) - 100
    return {
        "completed": make_event(
            "checkout.session.completed", payment, payment_intent=PI, created=t0
        ),
        "partial": charge_refunded(
            payment_intent=PI, amount_refunded=500, refunds=[("re_a", 500)], created=t0 + 10
        ),
        "rest": make_event(
            "refund.updated",
            payment_intent=PI,
            created=t0 + 20,
            id="re_b",
            amount=1400,
            status="succeeded",
        ),
    }


@pytest.mark.parametrize(
    "order", list(itertools.permutations(["completed", "partial", "rest"])), ids="-".join
)
def test_every_arrival_order_ends_fully_refunded(webhook_client, tenant, order):
    payment = PaymentSessionFactory(tenant=tenant, amount=1900)
    events = _events(payment)
    seen_completed = False
    for name in order:
        response = post_event(webhook_client, events[name])
        assert response.status_code == 200, response.content
        seen_completed = seen_completed or name == "completed"
        payment.refresh_from_db()
        if not seen_completed:
            # nothing applied before the completion: the refund waits, recorded
            assert (payment.status, payment.amount_refunded) == ("pending", 0)
            assert response.json()["status"] == "deferred"
    payment.refresh_from_db()
    assert payment.status == "refunded"
    assert payment.amount_refunded == 1900
    assert payment.stripe_payment_intent_id == PI
    assert StripeEvent.objects.filter(status="deferred").count() == 0
    assert StripeEvent.objects.filter(status="processed").count() == 3
    published = OutboxEvent.objects.filter(ordering_key=str(payment.pk))
    assert published.filter(event_type="payment.completed").count() == 1
    assert published.filter(
        event_type="payment.refunded", idempotency_key=f"payment.refunded:{payment.pk}:1900"
    ).exists()
    # the completion is published before any refund
    first = published.order_by("created_at", "occurred_at").first()
    assert first.event_type == "payment.completed"


@pytest.mark.parametrize("order", [("completed", "refund"), ("refund", "completed")])
def test_full_refund_and_completion_in_either_order(webhook_client, tenant, order):
    payment = PaymentSessionFactory(tenant=tenant, amount=1900)
    t0 = int(time.time()) - 100
    events = {
        "completed": make_event(
            "checkout.session.completed", payment, payment_intent=PI, created=t0
        ),
        "refund": charge_refunded(
            payment_intent=PI, amount_refunded=1900, refunds=[("re_full", 1900)], created=t0 + 5
        ),
    }
    for name in order:
        assert post_event(webhook_client, events[name]).status_code == 200
    payment.refresh_from_db()
    assert (payment.status, payment.amount_refunded) == ("refunded", 1900)
    types = list(
        OutboxEvent.objects.filter(ordering_key=str(payment.pk))
        .order_by("created_at")
        .values_list("event_type", flat=True)
    )
    assert types == ["payment.completed", "payment.refunded"]


def test_refund_for_a_payment_that_never_completes_stays_deferred(webhook_client, tenant):
    payment = PaymentSessionFactory(tenant=tenant)
    refund = charge_refunded(payment_intent="pi_unknown", amount_refunded=100, refunds=[])
    response = post_event(webhook_client, refund)
    assert response.json()["status"] == "deferred"
    stored = StripeEvent.objects.get()
    assert stored.stripe_payment_intent_id == "pi_unknown"
    assert "pi_unknown" in stored.result_note
    # a duplicate of a deferred event is acknowledged, not re-deferred
    assert post_event(webhook_client, refund).json()["duplicate"] is True
    payment.refresh_from_db()
    assert payment.status == "pending"


@pytest.mark.django_db(transaction=True)
def test_refund_racing_its_completion_is_never_lost(tenant):
    """Completion and refund of one payment arrive at the same moment, many times over:
    the refund is applied either directly or by the completion's replay, never left behind."""
    import threading

    from django.db import connection
    from django.test import Client

    from tests.payments.factories import body_of, post_raw, sign

    payments = [PaymentSessionFactory(tenant=tenant, amount=1900) for _ in range(12)]
    for i, payment in enumerate(payments):
        pi = f"pi_race_{i}"
        t0 = int(time.time()) - 50
        pair = [
            make_event("checkout.session.completed", payment, payment_intent=pi, created=t0),
            charge_refunded(
                payment_intent=pi, amount_refunded=1900, refunds=[(f"re_{i}", 1900)], created=t0 + 1
            ),
        ]
        barrier = threading.Barrier(2)
        statuses = []

        def send(event, barrier=barrier, statuses=statuses):
            body = body_of(event)
            header = sign(body)
            try:
                barrier.wait(timeout=10)
                statuses.append(post_raw(Client(), body, header).status_code)
            finally:
                connection.close()

        threads = [threading.Thread(target=send, args=(e,)) for e in pair]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert statuses == [200, 200]
    states = set(
        PaymentSession.objects.filter(tenant=tenant).values_list("status", "amount_refunded")
    )
    assert states == {("refunded", 1900)}
    assert StripeEvent.objects.filter(status="deferred").count() == 0


def test_a_failing_deferred_refund_does_not_block_the_completion(webhook_client, tenant):
    payment = PaymentSessionFactory(tenant=tenant, amount=1000)
    t0 = int(time.time()) - 100
    # more refunded than the payment's amount: the CHECK refuses it when it is replayed
    refund = charge_refunded(
        payment_intent=PI, amount_refunded=1900, refunds=[("re_big", 1900)], created=t0 + 5
    )
    assert post_event(webhook_client, refund).json()["status"] == "deferred"
    completed = make_event("checkout.session.completed", payment, payment_intent=PI, created=t0)
    response = post_event(webhook_client, completed)
    assert response.status_code == 200
    payment.refresh_from_db()
    assert (payment.status, payment.amount_refunded) == ("completed", 0)
    stored = StripeEvent.objects.get(stripe_event_id=refund["id"])
    assert stored.status == "failed"
    assert "payment_session_refund_within_amount" in stored.processing_error
    assert OutboxEvent.objects.filter(event_type="payment.refunded").count() == 0
    assert OutboxEvent.objects.filter(event_type="payment.completed").count() == 1
