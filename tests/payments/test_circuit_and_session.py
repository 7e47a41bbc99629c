"""The Stripe circuit breaker (state shared across processes) and GET /api/payments/sessions."""

from __future__ import annotations

import datetime as dt

import pytest
import time_machine
from django.utils import timezone

from payments.circuit import circuit_state
from payments.models import CircuitBreakerState, PaymentSession
from tests.payments.factories import PaymentSessionFactory
from tests.processes import run_django_snippet
from tests.tenancy import assert_error, assert_tenant_isolated

URL = "/api/payments/checkout"
BODY = {
    "email": "ada@example.com",
    "firstName": "Ada",
    "amount": 1900,
    "currency": "eur",
    "successUrl": "https://app.example.test/thanks",
    "cancelUrl": "https://app.example.test/cancel",
}


@pytest.mark.django_db
def test_circuit_opens_after_threshold_and_refuses_without_calling_stripe(api, stripe_stub):
    stripe_stub.mode = "server_error"
    for _ in range(3):  # threshold in tests
        assert_error(api.post(URL, BODY, format="json"), 502, "stripe_unavailable")
    assert circuit_state() == "open"
    calls_before = len(stripe_stub.calls())
    error = assert_error(api.post(URL, BODY, format="json"), 503, "stripe_circuit_open")
    assert 1 <= error["details"]["retryAfterSeconds"] <= 31
    assert len(stripe_stub.calls()) == calls_before
    assert PaymentSession.objects.count() == 0


@pytest.mark.django_db
def test_client_errors_do_not_open_the_circuit(api, stripe_stub):
    stripe_stub.mode = "invalid_request"
    for _ in range(5):
        assert_error(api.post(URL, BODY, format="json"), 400, "stripe_invalid_request")
    assert circuit_state() == "closed"
    assert CircuitBreakerState.objects.get().consecutive_failures == 0


@pytest.mark.django_db
def test_half_open_probe_closes_the_circuit_on_success(api, stripe_stub):
    stripe_stub.mode = "server_error"
    for _ in range(3):
        api.post(URL, BODY, format="json")
    stripe_stub.mode = "success"
    with time_machine.travel(timezone.now() + dt.timedelta(seconds=31), tick=True):
        assert circuit_state() == "half_open"
        response = api.post(URL, BODY, format="json")
        assert response.status_code == 201, response.content
    assert circuit_state() == "closed"
    assert CircuitBreakerState.objects.get().consecutive_failures == 0


@pytest.mark.django_db
def test_failed_probe_reopens_the_circuit(api, stripe_stub):
    stripe_stub.mode = "server_error"
    for _ in range(3):
        api.post(URL, BODY, format="json")
    with time_machine.travel(timezone.now() + dt.timedelta(seconds=31), tick=True):
        assert_error(api.post(URL, BODY, format="json"), 502, "stripe_unavailable")
        assert circuit_state() == "open"
        assert_error(api.post(URL, BODY, format="json"), 503, "stripe_circuit_open")


@pytest.mark.django_db(transaction=True)
def test_open_circuit_is_seen_by_another_process(api, stripe_stub):
    stripe_stub.mode = "server_error"
    for _ in range(3):
        api.post(URL, BODY, format="json")
    result = run_django_snippet(
        "from payments.circuit import circuit_before_call, CircuitOpen\n"
        "try:\n    circuit_before_call()\n    print('closed')\n"
        "except CircuitOpen as exc:\n    print('open', exc.retry_after_seconds)\n",
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == "open"


# --- GET /api/payments/sessions/{id} ---------------------------------------------------------


@pytest.mark.django_db
def test_session_shows_status_amounts_and_stripe_ids(api, tenant):
    ps = PaymentSessionFactory(
        tenant=tenant,
        status="partially_refunded",
        amount_refunded=500,
        completed_at=timezone.now(),
        stripe_payment_intent_id="pi_123",
    )
    response = api.get(f"/api/payments/sessions/{ps.pk}")
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == str(ps.pk)
    assert (body["status"], body["amount"], body["amountRefunded"], body["currency"]) == (
        "partially_refunded",
        1900,
        500,
        "eur",
    )
    assert body["stripeCheckoutSessionId"] == ps.stripe_checkout_session_id
    assert body["stripePaymentIntentId"] == "pi_123"
    assert body["completedAt"] is not None


@pytest.mark.django_db
def test_session_of_another_tenant_is_not_found(api, other_api, tenant):
    ps = PaymentSessionFactory(tenant=tenant)
    assert_tenant_isolated(
        other_api,
        "get",
        f"/api/payments/sessions/{ps.pk}",
        unchanged=lambda: PaymentSession.objects.filter(pk=ps.pk).values().get(),
    )


@pytest.mark.django_db
def test_session_needs_a_secret_key_and_a_valid_id(api, browser_api, tenant):
    ps = PaymentSessionFactory(tenant=tenant)
    assert_error(browser_api.get(f"/api/payments/sessions/{ps.pk}"), 403, "secret_key_required")
    assert_error(api.get("/api/payments/sessions/not-a-uuid"), 404, "not_found")
