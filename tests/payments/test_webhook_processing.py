"""The state machine driven by signed webhooks: every handled type, duplicates (also at the
same moment), failures recorded outside the rolled-back transaction, outbox events."""

from __future__ import annotations

import threading

import pytest
from django.db import connection
from django.test import Client

from outbox.models import OutboxEvent
from payments.models import PaymentSession, StripeEvent
from tests.payments.factories import (
    PaymentSessionFactory,
    body_of,
    charge_refunded,
    make_event,
    post_event,
    post_raw,
    sign,
)
from tests.tenancy import assert_error

pytestmark = pytest.mark.django_db


def _outbox(ps, event_type=None):
    rows = OutboxEvent.objects.filter(tenant_id=ps.tenant_id, ordering_key=str(ps.pk))
    if event_type:
        rows = rows.filter(event_type=event_type)
    return list(rows.order_by("created_at"))


def test_paid_completion_completes_and_publishes_once(webhook_client, payment):
    event = make_event("checkout.session.completed", payment, payment_intent="pi_paid_1")
    assert post_event(webhook_client, event).status_code == 200
    payment.refresh_from_db()
    assert payment.status == "completed"
    assert payment.completed_at is not None
    assert payment.stripe_payment_intent_id == "pi_paid_1"
    [published] = _outbox(payment)
    assert published.event_type == "payment.completed"
    assert published.topic == "payments"
    assert published.idempotency_key == f"payment.completed:{payment.pk}"
    assert published.payload["paymentSessionId"] == str(payment.pk)
    assert published.payload["status"] == "completed"
    assert published.payload["previousStatus"] == "pending"
    stored = StripeEvent.objects.get(stripe_event_id=event["id"])
    assert stored.payment_session_id == payment.pk
    assert stored.tenant_id == payment.tenant_id
    assert stored.payload == event
    assert stored.raw_body.encode() == body_of(event)  # the exact signed bytes
    assert stored.processed_at is not None
    assert stored.result_note == "applied: pending → completed"
    assert (stored.stripe_object_id, stored.stripe_payment_intent_id) == (
        payment.stripe_checkout_session_id,
        "pi_paid_1",
    )
    assert stored.event_created_at.timestamp() == event["created"]


def test_unpaid_completion_waits_for_the_async_result(webhook_client, payment):
    unpaid = make_event(
        "checkout.session.completed", payment, payment_intent="pi_async", payment_status="unpaid"
    )
    assert post_event(webhook_client, unpaid).status_code == 200
    payment.refresh_from_db()
    assert payment.status == "pending"
    assert payment.stripe_payment_intent_id == "pi_async"
    assert _outbox(payment) == []
    ok = make_event("checkout.session.async_payment_succeeded", payment)
    assert post_event(webhook_client, ok).status_code == 200
    payment.refresh_from_db()
    assert payment.status == "completed"
    assert [e.event_type for e in _outbox(payment)] == ["payment.completed"]


def test_async_failure_then_later_success(webhook_client, payment):
    assert (
        post_event(
            webhook_client, make_event("checkout.session.async_payment_failed", payment)
        ).status_code
        == 200
    )
    payment.refresh_from_db()
    assert payment.status == "failed"
    assert payment.completed_at is None
    post_event(webhook_client, make_event("checkout.session.async_payment_succeeded", payment))
    payment.refresh_from_db()
    assert payment.status == "completed"
    assert [e.event_type for e in _outbox(payment)] == ["payment.failed", "payment.completed"]


def test_expiry_expires_a_pending_payment(webhook_client, payment):
    post_event(webhook_client, make_event("checkout.session.expired", payment))
    payment.refresh_from_db()
    assert payment.status == "expired"
    [published] = _outbox(payment)
    assert published.event_type == "payment.expired"
    assert published.idempotency_key == f"payment.expired:{payment.pk}"


def test_disallowed_transition_is_ignored_and_recorded(webhook_client, payment):
    post_event(webhook_client, make_event("checkout.session.completed", payment))
    late = make_event("checkout.session.expired", payment)
    response = post_event(webhook_client, late)
    assert response.status_code == 200
    assert response.json()["status"] == "ignored"
    payment.refresh_from_db()
    assert payment.status == "completed"
    stored = StripeEvent.objects.get(stripe_event_id=late["id"])
    assert stored.status == "ignored"
    assert "completed → expired is not allowed" in stored.result_note
    assert [e.event_type for e in _outbox(payment)] == ["payment.completed"]


def test_late_failure_after_completion_changes_nothing(webhook_client, payment):
    post_event(webhook_client, make_event("checkout.session.completed", payment))
    late = make_event("checkout.session.async_payment_failed", payment)
    assert post_event(webhook_client, late).json()["status"] == "processed"
    payment.refresh_from_db()
    assert payment.status == "completed"
    note = StripeEvent.objects.get(stripe_event_id=late["id"]).result_note
    assert note == "no change: already completed (past failed)"
    assert [e.event_type for e in _outbox(payment)] == ["payment.completed"]


def test_late_completion_of_a_refunded_payment_changes_nothing(webhook_client, payment):
    post_event(
        webhook_client, make_event("checkout.session.completed", payment, payment_intent="pi_z")
    )
    post_event(
        webhook_client,
        charge_refunded(payment_intent="pi_z", amount_refunded=1900, refunds=[("re_z", 1900)]),
    )
    again = make_event("checkout.session.async_payment_succeeded", payment, payment_intent="pi_z")
    assert post_event(webhook_client, again).json()["status"] == "processed"
    payment.refresh_from_db()
    assert (payment.status, payment.amount_refunded) == ("refunded", 1900)
    assert len(_outbox(payment, "payment.completed")) == 1


def test_partial_then_full_refund(webhook_client, payment):
    post_event(
        webhook_client, make_event("checkout.session.completed", payment, payment_intent="pi_r")
    )
    payment.refresh_from_db()
    post_event(
        webhook_client, charge_refunded(payment, amount_refunded=500, refunds=[("re_1", 500)])
    )
    payment.refresh_from_db()
    assert (payment.status, payment.amount_refunded) == ("partially_refunded", 500)
    post_event(
        webhook_client,
        charge_refunded(payment, amount_refunded=700, refunds=[("re_1", 500), ("re_2", 200)]),
    )
    payment.refresh_from_db()
    assert (payment.status, payment.amount_refunded) == ("partially_refunded", 700)
    post_event(
        webhook_client,
        charge_refunded(
            payment, amount_refunded=1900, refunds=[("re_1", 500), ("re_2", 200), ("re_3", 1200)]
        ),
    )
    payment.refresh_from_db()
    assert (payment.status, payment.amount_refunded) == ("refunded", 1900)
    assert set(payment.refunds) == {"re_1", "re_2", "re_3"}
    refunded = _outbox(payment, "payment.refunded")
    assert [e.idempotency_key for e in refunded] == [
        f"payment.refunded:{payment.pk}:500",
        f"payment.refunded:{payment.pk}:700",
        f"payment.refunded:{payment.pk}:1900",
    ]
    assert refunded[-1].payload["fullyRefunded"] is True


def test_refund_events_count_only_succeeded_refunds(webhook_client, payment):
    post_event(
        webhook_client, make_event("checkout.session.completed", payment, payment_intent="pi_x")
    )
    payment.refresh_from_db()
    pending = make_event("refund.created", payment, id="re_p", amount=400, status="pending")
    assert post_event(webhook_client, pending).status_code == 200
    payment.refresh_from_db()
    assert (payment.status, payment.amount_refunded) == ("completed", 0)
    assert payment.refunds == {"re_p": {"amount": 400, "status": "pending"}}
    done = make_event("refund.updated", payment, id="re_p", amount=400, status="succeeded")
    post_event(webhook_client, done)
    payment.refresh_from_db()
    assert (payment.status, payment.amount_refunded) == ("partially_refunded", 400)
    rest = make_event("refund.created", payment, id="re_q", amount=1500, status="succeeded")
    post_event(webhook_client, rest)
    payment.refresh_from_db()
    assert (payment.status, payment.amount_refunded) == ("refunded", 1900)


def test_refund_of_an_expired_payment_is_ignored(webhook_client, payment):
    PaymentSession.objects.filter(pk=payment.pk).update(stripe_payment_intent_id="pi_e")
    post_event(webhook_client, make_event("checkout.session.expired", payment))
    response = post_event(
        webhook_client, charge_refunded(payment_intent="pi_e", amount_refunded=100, refunds=[])
    )
    assert response.json()["status"] == "ignored"
    payment.refresh_from_db()
    assert (payment.status, payment.amount_refunded) == ("expired", 0)


def test_duplicate_event_is_acknowledged_and_not_processed_again(webhook_client, payment):
    event = make_event("checkout.session.completed", payment)
    first = post_event(webhook_client, event)
    second = post_event(webhook_client, event)
    assert first.json()["duplicate"] is False
    assert second.status_code == 200
    assert second.json() == {"received": True, "duplicate": True, "status": "processed"}
    stored = StripeEvent.objects.get()
    assert stored.attempts == 1
    assert len(_outbox(payment)) == 1


def test_same_fact_in_two_events_publishes_once(webhook_client, payment):
    post_event(webhook_client, make_event("checkout.session.completed", payment))
    again = make_event("checkout.session.async_payment_succeeded", payment)
    assert post_event(webhook_client, again).json()["status"] == "processed"
    assert StripeEvent.objects.get(stripe_event_id=again["id"]).result_note.startswith("no change")
    assert len(_outbox(payment)) == 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_copies_of_one_event_are_processed_once(tenant):
    payment = PaymentSessionFactory(tenant=tenant)
    event = make_event("checkout.session.completed", payment)
    body = body_of(event)
    header = sign(body)
    copies = 8
    barrier = threading.Barrier(copies)
    results, errors = [], []

    def send():
        try:
            barrier.wait(timeout=10)
            results.append(post_raw(Client(), body, header))
        except Exception as exc:  # surfaced below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=send) for _ in range(copies)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert [r.status_code for r in results] == [200] * copies
    assert sorted(r.json()["duplicate"] for r in results) == [False] + [True] * (copies - 1)
    assert StripeEvent.objects.filter(stripe_event_id=event["id"]).count() == 1
    assert StripeEvent.objects.get().attempts == 1
    assert OutboxEvent.objects.filter(event_type="payment.completed").count() == 1
    payment.refresh_from_db()
    assert payment.status == "completed"


def test_processing_error_is_recorded_answered_500_and_rolled_back(webhook_client, payment):
    post_event(
        webhook_client, make_event("checkout.session.completed", payment, payment_intent="pi_b")
    )
    # Stripe says more was refunded than this payment's amount: the CHECK refuses the write.
    bad = charge_refunded(payment_intent="pi_b", amount_refunded=5000, refunds=[("re_x", 5000)])
    response = post_event(webhook_client, bad)
    error = assert_error(response, 500, "webhook_processing_failed")
    assert error["details"] == {"eventId": bad["id"]}
    stored = StripeEvent.objects.get(stripe_event_id=bad["id"])
    assert stored.status == "failed"
    assert "payment_session_refund_within_amount" in stored.processing_error
    assert stored.attempts == 1
    assert stored.processed_at is None
    payment.refresh_from_db()
    assert (payment.status, payment.amount_refunded, payment.refunds) == ("completed", 0, {})
    assert _outbox(payment, "payment.refunded") == []
    # Stripe retries the same event: it is processed again (not taken for a duplicate).
    retry = post_event(webhook_client, bad)
    assert_error(retry, 500, "webhook_processing_failed")
    stored.refresh_from_db()
    assert stored.attempts == 2


def test_unhandled_type_is_stored_and_ignored(webhook_client):
    event = make_event("customer.created")
    response = post_event(webhook_client, event)
    assert response.status_code == 200
    stored = StripeEvent.objects.get()
    assert (stored.type, stored.status) == ("customer.created", "ignored")
    assert stored.tenant_id is None


def test_checkout_session_that_is_not_ours_is_ignored(webhook_client, payment):
    event = make_event("checkout.session.completed", payment)
    event["data"]["object"]["id"] = "cs_test_someone_elses"
    event["data"]["object"]["client_reference_id"] = None
    event["data"]["object"]["metadata"] = {}
    assert post_event(webhook_client, event).json()["status"] == "ignored"
    payment.refresh_from_db()
    assert payment.status == "pending"


def test_reference_to_another_tenants_payment_is_not_applied(webhook_client, payment, other_tenant):
    victim = PaymentSessionFactory(tenant=other_tenant)
    event = make_event("checkout.session.completed", payment)
    # a Checkout Session of ours whose metadata names another tenant's payment
    event["data"]["object"]["client_reference_id"] = str(victim.pk)
    event["data"]["object"]["metadata"]["tenant_id"] = str(other_tenant.pk)
    event["data"]["object"]["metadata"]["payment_session_id"] = str(victim.pk)
    assert post_event(webhook_client, event).json()["status"] == "ignored"
    victim.refresh_from_db()
    assert victim.status == "pending"
    assert OutboxEvent.objects.filter(tenant=other_tenant).count() == 0
