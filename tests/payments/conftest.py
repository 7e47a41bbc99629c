from __future__ import annotations

import pytest
from django.test import Client

from payments import stripe_api
from tests.payments.factories import OLD_SECRET, SECRET, PaymentSessionFactory
from tests.payments.stripe_stub import StripeStub


@pytest.fixture(autouse=True)
def _payments_settings(settings):
    settings.STRIPE_SECRET_KEY = "sk_test_atlas"
    settings.STRIPE_WEBHOOK_SECRET = [SECRET, OLD_SECRET]
    settings.STRIPE_TIMEOUT_SECONDS = 0.5
    settings.STRIPE_MAX_NETWORK_RETRIES = 0
    settings.STRIPE_CIRCUIT_FAILURE_THRESHOLD = 3
    settings.STRIPE_CIRCUIT_COOLDOWN_SECONDS = 30
    # Nothing listens here: a test that forgets the stub fails instead of reaching Stripe.
    settings.STRIPE_API_BASE = "http://127.0.0.1:9"
    settings.THROTTLE_ENABLED = False
    yield
    stripe_api._clients.clear()


@pytest.fixture
def stripe_stub(settings):
    stub = StripeStub().start()
    settings.STRIPE_API_BASE = stub.url
    yield stub
    stub.stop()


@pytest.fixture
def webhook_client():
    """No API key, and CSRF checks on: the webhook must not need either."""
    return Client(enforce_csrf_checks=True)


@pytest.fixture
def payment(tenant):
    return PaymentSessionFactory(tenant=tenant, stripe_payment_intent_id=None)
