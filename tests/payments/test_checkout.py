"""POST /api/payments/checkout through the real `stripe` SDK against a Stripe stand-in on
127.0.0.1: exact parameters and Idempotency-Key, error mapping, nothing half-created."""

from __future__ import annotations

import uuid

import pytest

from assessments.models import AssessmentSession
from payments.models import PaymentSession, StripeApiFailure
from payments.services.checkout import stripe_idempotency_key
from tests.payments.factories import AllowedPriceFactory
from tests.tenancy import assert_error

pytestmark = pytest.mark.django_db
URL = "/api/payments/checkout"


def _body(**overrides):
    body = {
        "email": "ada@example.com",
        "firstName": "Ada",
        "formData": {"goal": "strength", "age": 36},
        "amount": 1900,
        "currency": "EUR",
        "successUrl": "https://app.example.test/thanks",
        "cancelUrl": "https://app.example.test/cancel",
    }
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


def _price_body(**overrides):
    return _body(amount=None, currency=None, priceId="price_assessment", **overrides)


def test_checkout_with_amount_sends_exact_params_and_idempotency_key(api, tenant, stripe_stub):
    assessment = AssessmentSession.objects.create(tenant=tenant, email="ada@example.com")
    response = api.post(URL, _body(sessionId=str(assessment.pk)), format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    row = PaymentSession.objects.get()
    assert body == {
        "paymentSessionId": str(row.pk),
        "checkoutUrl": f"https://checkout.stripe.com/c/pay/{row.stripe_checkout_session_id}",
        "status": "pending",
    }
    [call] = stripe_stub.calls("POST", "/v1/checkout/sessions")
    ids = {"payment_session_id": str(row.pk), "tenant_id": str(tenant.pk)}
    assert call.params == {
        "mode": "payment",
        "client_reference_id": str(row.pk),
        "customer_email": "ada@example.com",
        "success_url": "https://app.example.test/thanks",
        "cancel_url": "https://app.example.test/cancel",
        "line_items[0][price_data][currency]": "eur",
        "line_items[0][price_data][unit_amount]": "1900",
        "line_items[0][price_data][product_data][name]": "Assessment",
        "line_items[0][quantity]": "1",
        "metadata[payment_session_id]": ids["payment_session_id"],
        "metadata[tenant_id]": ids["tenant_id"],
        "metadata[assessment_session_id]": str(assessment.pk),
        "payment_intent_data[metadata][payment_session_id]": ids["payment_session_id"],
        "payment_intent_data[metadata][tenant_id]": ids["tenant_id"],
        "payment_intent_data[metadata][assessment_session_id]": str(assessment.pk),
    }
    assert call.headers["idempotency-key"] == f"atlas-checkout-{row.pk}"
    assert call.headers["idempotency-key"] == stripe_idempotency_key(row.pk)
    assert call.headers["authorization"] == "Bearer sk_test_atlas"
    assert (row.tenant_id, row.assessment_session_id) == (tenant.pk, assessment.pk)
    assert (row.amount, row.currency, row.status) == (1900, "eur", "pending")
    assert row.form_data == {"goal": "strength", "age": 36}
    assert row.stripe_checkout_session_id.startswith("cs_test_stub")


def test_browser_key_can_start_a_checkout_for_an_allowed_price(browser_api, tenant, stripe_stub):
    AllowedPriceFactory(tenant=tenant, price_id="price_assessment")
    response = browser_api.post(URL, _price_body(), format="json")
    assert response.status_code == 201, response.content
    [call] = stripe_stub.calls("POST", "/v1/checkout/sessions")
    assert call.params["line_items[0][price]"] == "price_assessment"
    assert "line_items[0][price_data][unit_amount]" not in call.params
    row = PaymentSession.objects.get()
    assert (row.price_id, row.amount, row.currency) == ("price_assessment", 1900, "eur")


def test_browser_key_cannot_choose_the_amount(browser_api, stripe_stub):
    assert_error(
        browser_api.post(URL, _body(), format="json"), 403, "secret_key_required_for_amount"
    )
    assert stripe_stub.calls() == []
    assert PaymentSession.objects.count() == 0


def test_no_key_is_refused(anon_api, stripe_stub):
    assert_error(anon_api.post(URL, _body(), format="json"), 401, "authentication_required")
    assert stripe_stub.calls() == []


def test_retry_with_same_idempotency_key_returns_the_same_checkout(api, stripe_stub):
    first = api.post(URL, _body(), format="json", HTTP_IDEMPOTENCY_KEY="order-42")
    second = api.post(URL, _body(), format="json", HTTP_IDEMPOTENCY_KEY="order-42")
    assert first.status_code == 201
    assert second.status_code == 200
    assert second["Idempotent-Replayed"] == "true"
    assert second.json() == first.json()
    assert PaymentSession.objects.count() == 1
    assert len(stripe_stub.calls("POST")) == 1
    other = api.post(URL, _body(amount=2500), format="json", HTTP_IDEMPOTENCY_KEY="order-42")
    assert_error(other, 422, "idempotency_key_reused")
    assert PaymentSession.objects.count() == 1


def test_same_idempotency_key_in_two_tenants_are_two_checkouts(api, other_api, stripe_stub):
    a = api.post(URL, _body(), format="json", HTTP_IDEMPOTENCY_KEY="k1")
    b = other_api.post(URL, _body(), format="json", HTTP_IDEMPOTENCY_KEY="k1")
    assert (a.status_code, b.status_code) == (201, 201)
    assert a.json()["paymentSessionId"] != b.json()["paymentSessionId"]


def test_sdk_retry_after_5xx_reuses_the_idempotency_key(api, stripe_stub, settings):
    settings.STRIPE_MAX_NETWORK_RETRIES = 1
    stripe_stub.script = ["server_error"]
    response = api.post(URL, _body(), format="json")
    assert response.status_code == 201, response.content
    calls = stripe_stub.calls("POST", "/v1/checkout/sessions")
    assert len(calls) == 2
    row = PaymentSession.objects.get()
    assert {c.headers["idempotency-key"] for c in calls} == {f"atlas-checkout-{row.pk}"}
    assert calls[0].params == calls[1].params


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"email": "not-an-email"}, "invalid_email"),
        ({"email": "a b@example.com"}, "invalid_email"),
        ({"firstName": "   "}, "blank_first_name"),
        ({"formData": [1, 2]}, "not_object"),
        ({"currency": "euro"}, "invalid_currency"),
        ({"amount": 0}, "invalid_amount"),
        ({"amount": "lots"}, "validation_error"),
        ({"successUrl": "javascript:alert(1)"}, "invalid_url"),
        ({"successUrl": "/relative"}, "invalid_url"),
        ({"amount": 100_000_000}, "invalid_amount"),
        ({"cancelUrl": None}, "validation_error"),
        ({"priceId": "price_assessment"}, "price_and_amount_conflict"),
        ({"amount": None}, "price_or_amount_required"),
        ({"currency": None}, "price_or_amount_required"),
        ({"sessionId": "not-a-uuid"}, "validation_error"),
    ],
)
def test_bad_input_is_refused_before_stripe(api, stripe_stub, overrides, code):
    assert_error(api.post(URL, _body(**overrides), format="json"), 400, code)
    assert stripe_stub.calls() == []
    assert PaymentSession.objects.count() == 0


def test_malformed_json_is_refused(api, stripe_stub):
    response = api.post(URL, data=b"{oops", content_type="application/json")
    assert_error(response, 400, "malformed_json")
    assert stripe_stub.calls() == []


def test_another_tenants_assessment_session_is_not_found(api, other_tenant, stripe_stub):
    foreign = AssessmentSession.objects.create(tenant=other_tenant)
    response = api.post(URL, _body(sessionId=str(foreign.pk)), format="json")
    assert_error(response, 404, "assessment_session_not_found")
    response = api.post(URL, _body(sessionId=str(uuid.uuid4())), format="json")
    assert_error(response, 404, "assessment_session_not_found")
    assert stripe_stub.calls() == []
    assert PaymentSession.objects.count() == 0


@pytest.mark.parametrize(
    ("mode", "status", "code", "outage"),
    [
        ("invalid_request", 400, "stripe_invalid_request", False),
        ("card_error", 402, "stripe_card_error", False),
        ("auth_error", 502, "stripe_authentication_failed", False),
        ("rate_limited", 503, "stripe_rate_limited", False),
        ("server_error", 502, "stripe_unavailable", True),
        ("slow", 504, "stripe_timeout", True),
    ],
)
def test_stripe_errors_map_to_clear_codes_and_leave_nothing(
    api, tenant, stripe_stub, mode, status, code, outage
):
    stripe_stub.mode = mode
    stripe_stub.slow_seconds = 1.5  # > STRIPE_TIMEOUT_SECONDS (0.5) in tests
    error = assert_error(api.post(URL, _body(), format="json"), status, code)
    assert PaymentSession.objects.count() == 0
    failure = StripeApiFailure.objects.get()
    assert (failure.operation, failure.error_code, failure.tenant_id) == (
        "checkout.sessions.create",
        code,
        tenant.pk,
    )
    assert failure.payment_session_id is not None
    if mode == "invalid_request":
        assert error["details"]["stripeCode"] == "resource_missing"
        assert error["details"]["param"] == "line_items[0][price]"
        assert error["details"]["httpStatus"] == 400
    from payments.models import CircuitBreakerState

    breaker = CircuitBreakerState.objects.get(name="stripe")
    assert breaker.consecutive_failures == (1 if outage else 0)


def test_unreachable_stripe_is_502(api, settings):
    settings.STRIPE_API_BASE = "http://127.0.0.1:9"  # nothing listens
    assert_error(api.post(URL, _body(), format="json"), 502, "stripe_unreachable")
    assert PaymentSession.objects.count() == 0


def test_unconfigured_stripe_is_503(api, settings, stripe_stub):
    settings.STRIPE_SECRET_KEY = ""
    assert_error(api.post(URL, _body(), format="json"), 503, "payments_not_configured")
    assert stripe_stub.calls() == []


@pytest.mark.django_db(transaction=True)
def test_concurrent_retries_with_one_idempotency_key_make_one_checkout(secret_key, stripe_stub):
    import threading

    from django.db import connection

    from tests.conftest import client_for

    barrier = threading.Barrier(4)
    responses = []

    def send():
        try:
            barrier.wait(timeout=10)
            client = client_for(secret_key)
            responses.append(
                client.post(URL, _body(), format="json", HTTP_IDEMPOTENCY_KEY="double-click")
            )
        finally:
            connection.close()

    threads = [threading.Thread(target=send) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(r.status_code for r in responses) == [200, 200, 200, 201]
    assert len({r.json()["paymentSessionId"] for r in responses}) == 1
    assert PaymentSession.objects.count() == 1
    assert len(stripe_stub.sessions) == 1
    assert len({c.headers["idempotency-key"] for c in stripe_stub.calls("POST")}) == 1


def test_row_that_cannot_be_written_expires_the_stripe_session(api, tenant, stripe_stub):
    """Nothing half-created: when our insert fails after Stripe answered, the Checkout
    Session is expired at Stripe and no row is left."""
    from tests.payments.factories import PaymentSessionFactory

    # the stub's first session id is already taken by another row: the insert must fail
    PaymentSessionFactory(tenant=tenant, stripe_checkout_session_id="cs_test_stub0001")
    api.raise_request_exception = False
    response = api.post(URL, _body(), format="json")
    assert_error(response, 500, "internal_error")
    assert PaymentSession.objects.count() == 1
    [expire] = stripe_stub.calls("POST", "/v1/checkout/sessions/cs_test_stub0001/expire")
    assert stripe_stub.sessions["cs_test_stub0001"]["status"] == "expired"
    assert expire.method == "POST"


def test_browser_key_links_a_checkout_only_with_the_session_token(browser_api, tenant, stripe_stub):
    # A payment unlocks a session's paid result: a visitor holding only the public key and a
    # leaked session id must not start a checkout for another visitor's session.
    from tests.assessments.factories import SESSION_TOKEN, SessionFactory

    AllowedPriceFactory(tenant=tenant, price_id="price_assessment")
    session = SessionFactory(tenant=tenant)
    body = _price_body(sessionId=str(session.pk))
    assert_error(browser_api.post(URL, body, format="json"), 403, "session_token_required")
    wrong = browser_api.post(URL, body, format="json", HTTP_X_SESSION_TOKEN="guess")
    assert_error(wrong, 403, "invalid_session_token")
    assert PaymentSession.objects.count() == 0
    assert stripe_stub.calls("POST", "/v1/checkout/sessions") == []
    right = browser_api.post(URL, body, format="json", HTTP_X_SESSION_TOKEN=SESSION_TOKEN)
    assert right.status_code == 201, right.content
    assert PaymentSession.objects.get().assessment_session_id == session.pk
