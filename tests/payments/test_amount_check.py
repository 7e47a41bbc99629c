"""What Stripe reports a completed checkout charged (price, amount, currency) is checked
against what the session was created for: a mismatch ends `failed` with reason
amount_mismatch, alerts through the outbox and never completes; payment.completed names the
price, amount and currency a receiver may check."""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone

from outbox.models import OutboxEvent
from payments.models import PaymentSession, StripeEvent
from payments.services.reconciliation import payment_session_reconcile
from tests.payments.factories import (
    AllowedPriceFactory,
    PaymentSessionFactory,
    charge_refunded,
    line_items,
    make_event,
    post_event,
)

pytestmark = pytest.mark.django_db


def _published(ps) -> list[str]:
    rows = OutboxEvent.objects.filter(tenant_id=ps.tenant_id, ordering_key=str(ps.pk))
    return list(rows.order_by("created_at", "seq").values_list("event_type", flat=True))


def _alert(ps) -> OutboxEvent:
    return OutboxEvent.objects.get(
        tenant_id=ps.tenant_id, event_type="payment.amount_mismatch", ordering_key=str(ps.pk)
    )


@pytest.fixture
def priced(tenant):
    """A 19.00 EUR checkout created for the tenant's price_assessment."""
    return PaymentSessionFactory(tenant=tenant, price_id="price_assessment", amount=1900)


def test_attack_completion_with_a_different_amount_fails_and_alerts(webhook_client, priced):
    event = make_event("checkout.session.completed", priced, amount_total=100)
    response = post_event(webhook_client, event)
    assert response.status_code == 200
    assert response.json()["status"] == "processed"
    priced.refresh_from_db()
    assert (priced.status, priced.failure_reason) == ("failed", "amount_mismatch")
    assert priced.completed_at is None
    assert _published(priced) == ["payment.failed", "payment.amount_mismatch"]
    alert = _alert(priced)
    assert alert.topic == "payments"
    assert alert.idempotency_key == f"payment.amount_mismatch:{priced.pk}"
    assert alert.payload["mismatches"] == {"amount": {"expected": 1900, "reported": 100}}
    assert alert.payload["stripeEventId"] == event["id"]
    assert (alert.payload["priceId"], alert.payload["amount"], alert.payload["currency"]) == (
        "price_assessment",
        1900,
        "eur",
    )
    failed = OutboxEvent.objects.get(event_type="payment.failed", ordering_key=str(priced.pk))
    assert failed.payload["failureReason"] == "amount_mismatch"
    assert not OutboxEvent.objects.filter(event_type="payment.completed").exists()
    stored = StripeEvent.objects.get(stripe_event_id=event["id"])
    assert stored.result_note.startswith("amount_mismatch: amount expected 1900")
    assert "pending → failed" in stored.result_note


def test_the_session_api_names_the_reason(webhook_client, api, priced):
    assert api.get(f"/api/payments/sessions/{priced.pk}").json()["failureReason"] is None
    post_event(webhook_client, make_event("checkout.session.completed", priced, amount_total=100))
    body = api.get(f"/api/payments/sessions/{priced.pk}").json()
    assert (body["status"], body["failureReason"]) == ("failed", "amount_mismatch")
    assert body["priceId"] == "price_assessment"


def test_another_currency_is_a_mismatch(webhook_client, priced):
    post_event(webhook_client, make_event("checkout.session.completed", priced, currency="usd"))
    priced.refresh_from_db()
    assert (priced.status, priced.failure_reason) == ("failed", "amount_mismatch")
    assert _alert(priced).payload["mismatches"] == {
        "currency": {"expected": "eur", "reported": "usd"}
    }


def test_a_missing_amount_is_a_mismatch(webhook_client, priced):
    post_event(webhook_client, make_event("checkout.session.completed", priced, amount_total=None))
    priced.refresh_from_db()
    assert priced.failure_reason == "amount_mismatch"


def test_another_line_item_price_is_a_mismatch(webhook_client, priced):
    event = make_event(
        "checkout.session.completed", priced, line_items=line_items("price_beta_cheap")
    )
    post_event(webhook_client, event)
    priced.refresh_from_db()
    assert (priced.status, priced.failure_reason) == ("failed", "amount_mismatch")
    assert _alert(priced).payload["mismatches"] == {
        "priceId": {"expected": "price_assessment", "reported": ["price_beta_cheap"]}
    }
    assert "payment.completed" not in _published(priced)


def test_matching_report_completes_and_names_price_amount_currency(webhook_client, priced):
    event = make_event(
        "checkout.session.completed", priced, line_items=line_items("price_assessment")
    )
    post_event(webhook_client, event)
    priced.refresh_from_db()
    assert (priced.status, priced.failure_reason) == ("completed", "")
    completed = OutboxEvent.objects.get(event_type="payment.completed")
    assert completed.payload["priceId"] == "price_assessment"
    assert completed.payload["amount"] == 1900
    assert completed.payload["currency"] == "eur"
    assert not OutboxEvent.objects.filter(event_type="payment.amount_mismatch").exists()


def test_a_duplicate_of_the_mismatch_alerts_once(webhook_client, priced):
    event = make_event("checkout.session.completed", priced, amount_total=100)
    post_event(webhook_client, event)
    second = post_event(webhook_client, event)
    assert second.json()["duplicate"] is True
    other_copy = make_event("checkout.session.completed", priced, amount_total=100)
    assert post_event(webhook_client, other_copy).json()["status"] == "processed"
    assert _published(priced) == ["payment.failed", "payment.amount_mismatch"]
    assert "already failed (amount_mismatch)" in (
        StripeEvent.objects.get(stripe_event_id=other_copy["id"]).result_note
    )


def test_no_later_event_completes_a_mismatched_payment(webhook_client, priced):
    post_event(webhook_client, make_event("checkout.session.completed", priced, amount_total=100))
    # a later "success" with the right amount (or a reprocessed copy): refused
    late = make_event("checkout.session.async_payment_succeeded", priced)
    response = post_event(webhook_client, late)
    assert response.json()["status"] == "ignored"
    priced.refresh_from_db()
    assert (priced.status, priced.completed_at) == ("failed", None)
    assert "never completed" in StripeEvent.objects.get(stripe_event_id=late["id"]).result_note
    assert "payment.completed" not in _published(priced)


def test_unpaid_completion_with_another_amount_fails_at_once(webhook_client, priced):
    unpaid = make_event(
        "checkout.session.completed", priced, payment_status="unpaid", amount_total=100
    )
    post_event(webhook_client, unpaid)
    priced.refresh_from_db()
    assert (priced.status, priced.failure_reason) == ("failed", "amount_mismatch")
    assert priced.stripe_payment_intent_id  # refunds of it still find the payment
    post_event(webhook_client, make_event("checkout.session.async_payment_succeeded", priced))
    priced.refresh_from_db()
    assert priced.status == "failed"


def test_async_failure_then_success_for_another_amount(webhook_client, priced):
    post_event(webhook_client, make_event("checkout.session.async_payment_failed", priced))
    late = make_event("checkout.session.async_payment_succeeded", priced, amount_total=100)
    post_event(webhook_client, late)
    priced.refresh_from_db()
    assert (priced.status, priced.failure_reason) == ("failed", "amount_mismatch")
    assert _published(priced) == ["payment.failed", "payment.amount_mismatch"]


def test_a_late_mismatch_on_a_completed_payment_keeps_it_and_alerts(webhook_client, priced):
    post_event(webhook_client, make_event("checkout.session.completed", priced))
    odd = make_event("checkout.session.async_payment_succeeded", priced, amount_total=100)
    assert post_event(webhook_client, odd).json()["status"] == "ignored"
    priced.refresh_from_db()
    assert (priced.status, priced.failure_reason) == ("completed", "")
    assert _published(priced) == ["payment.completed", "payment.amount_mismatch"]


def test_a_refund_of_a_mismatched_payment_is_recorded_not_left_waiting(webhook_client, priced):
    post_event(
        webhook_client,
        make_event("checkout.session.completed", priced, amount_total=100, payment_intent="pi_m"),
    )
    refund = charge_refunded(payment_intent="pi_m", amount_refunded=100, refunds=[("re_m", 100)])
    assert post_event(webhook_client, refund).json()["status"] == "ignored"
    priced.refresh_from_db()
    assert (priced.status, priced.amount_refunded) == ("failed", 0)


def test_the_database_never_lets_a_mismatched_payment_complete(priced):
    PaymentSession.objects.filter(pk=priced.pk).update(
        status="failed", failure_reason="amount_mismatch"
    )
    with pytest.raises(IntegrityError), transaction.atomic():
        PaymentSession.objects.filter(pk=priced.pk).update(
            status="completed", completed_at=timezone.now()
        )
    with pytest.raises(IntegrityError), transaction.atomic():
        PaymentSession.objects.filter(pk=priced.pk).update(failure_reason="bogus")


# --- reconcile reads the price from Stripe too ----------------------------------------------


def _stripe_says_complete(stripe_stub, ps, **fields):
    PaymentSession.objects.filter(pk=ps.pk).update(
        created_at=timezone.now() - dt.timedelta(hours=2)
    )
    return stripe_stub.add_session(
        ps.stripe_checkout_session_id,
        status="complete",
        payment_status="paid",
        payment_intent="pi_rec",
        **fields,
    )


def test_reconcile_checks_the_line_item_price(stripe_stub, priced):
    _stripe_says_complete(stripe_stub, priced, price="price_beta_cheap")
    status, note = payment_session_reconcile(payment_session=priced)
    priced.refresh_from_db()
    assert (priced.status, priced.failure_reason) == ("failed", "amount_mismatch")
    assert note.startswith("amount_mismatch: priceId expected 'price_assessment'")
    [call] = stripe_stub.calls("GET")
    assert call.params == {"expand[0]": "line_items"}
    assert _alert(priced).payload["source"] == "reconcile"


def test_reconcile_checks_the_amount(stripe_stub, priced):
    _stripe_says_complete(stripe_stub, priced, price="price_assessment", amount_total=100)
    payment_session_reconcile(payment_session=priced)
    priced.refresh_from_db()
    assert (priced.status, priced.failure_reason) == ("failed", "amount_mismatch")


def test_reconcile_completes_a_matching_payment(stripe_stub, priced):
    _stripe_says_complete(stripe_stub, priced, price="price_assessment")
    payment_session_reconcile(payment_session=priced)
    priced.refresh_from_db()
    assert (priced.status, priced.failure_reason) == ("completed", "")
    assert _published(priced) == ["payment.completed"]


# --- end to end: the checkout stores what it was created for --------------------------------


def test_checkout_then_webhook_end_to_end(browser_api, tenant, stripe_stub, webhook_client):
    AllowedPriceFactory(tenant=tenant, price_id="price_assessment")
    response = browser_api.post(
        "/api/payments/checkout",
        {
            "email": "ada@example.com",
            "firstName": "Ada",
            "priceId": "price_assessment",
            "successUrl": "https://app.example.test/thanks",
            "cancelUrl": "https://app.example.test/cancel",
        },
        format="json",
    )
    assert response.status_code == 201, response.content
    ps = PaymentSession.objects.get()
    assert (ps.price_id, ps.amount, ps.currency) == ("price_assessment", 1900, "eur")
    # Stripe's completion carries what Stripe charged (the stub's session)
    session = stripe_stub.sessions[ps.stripe_checkout_session_id]
    event = make_event("checkout.session.completed", ps)
    assert (event["data"]["object"]["amount_total"], event["data"]["object"]["currency"]) == (
        session["amount_total"],
        session["currency"],
    )
    post_event(webhook_client, event)
    ps.refresh_from_db()
    assert ps.status == "completed"
    payload = OutboxEvent.objects.get(event_type="payment.completed").payload
    assert (payload["priceId"], payload["amount"], payload["currency"]) == (
        "price_assessment",
        1900,
        "eur",
    )


def test_a_mismatch_degrades_the_payments_status(webhook_client, priced):
    from payments.ops import status_findings

    [before] = status_findings(now=timezone.now())
    assert before.level == "ok"
    post_event(webhook_client, make_event("checkout.session.completed", priced, amount_total=100))
    [after] = status_findings(now=timezone.now())
    assert after.level == "degraded"
    assert "1 amount mismatch(es) in 24 h" in after.summary
    assert "1 payment(s) failed for amount_mismatch in the last 24 h" in after.lines
