"""Payment rows and signed Stripe-shaped events built from tests/payments/fixtures/*.json."""

from __future__ import annotations

import copy
import itertools
import json
import time
import uuid
from pathlib import Path

import factory
import stripe

from payments.models import AllowedPrice, PaymentSession
from tests.factories import TenantFactory

FIXTURES = Path(__file__).parent / "fixtures"
WEBHOOK_URL = "/api/payments/stripe/webhook"
SECRET = "whsec_test_current"
OLD_SECRET = "whsec_test_previous"
_seq = itertools.count(1)


class PaymentSessionFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = PaymentSession

    tenant = factory.SubFactory(TenantFactory)
    email = factory.Sequence(lambda n: f"buyer{n}@example.com")
    first_name = "Ada"
    form_data = factory.LazyFunction(lambda: {"plan": "full"})
    amount = 1900
    currency = "eur"
    stripe_checkout_session_id = factory.Sequence(lambda n: f"cs_test_factory{n:05d}")
    stripe_payment_intent_id = None
    checkout_url = factory.LazyAttribute(
        lambda o: f"https://checkout.stripe.com/c/pay/{o.stripe_checkout_session_id}"
    )


class AllowedPriceFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = AllowedPrice

    tenant = factory.SubFactory(TenantFactory)
    price_id = "price_assessment"  # the stub's 19.00 EUR price


def fixture(event_type: str) -> dict:
    return json.loads((FIXTURES / f"{event_type}.json").read_text())


def make_event(
    event_type: str,
    ps: PaymentSession | None = None,
    *,
    payment_intent: str | None = None,
    created: int | None = None,
    event_id: str | None = None,
    **object_fields,
) -> dict:
    """A Stripe event of `event_type` about `ps`, with a fresh event id."""
    event = copy.deepcopy(fixture(event_type))
    event["id"] = event_id or f"evt_test_{next(_seq):06d}_{uuid.uuid4().hex[:6]}"
    event["created"] = created if created is not None else int(time.time())
    obj = event["data"]["object"]
    pi = payment_intent or (ps.stripe_payment_intent_id if ps else None) or "pi_test_default"
    if event_type.startswith("checkout.session.") and ps is not None:
        obj["id"] = ps.stripe_checkout_session_id
        obj["client_reference_id"] = str(ps.pk)
        obj["metadata"] = {
            "payment_session_id": str(ps.pk),
            "tenant_id": str(ps.tenant_id),
            "assessment_session_id": "",
        }
        obj["amount_total"] = ps.amount
        obj["currency"] = ps.currency
        if obj.get("payment_intent"):
            obj["payment_intent"] = pi
    elif event_type == "charge.refunded":
        obj["payment_intent"] = pi
        for refund in obj["refunds"]["data"]:
            refund["payment_intent"] = pi
    elif event_type.startswith("refund."):
        obj["payment_intent"] = pi
    obj.update(object_fields)
    return event


def line_items(*price_ids: str, has_more: bool = False) -> dict:
    """A Checkout Session's `line_items` as Stripe returns them when expanded (webhook events
    carry none; pass this to make_event to report the price)."""
    data = [
        {"object": "item", "price": {"id": p, "object": "price"}, "quantity": 1} for p in price_ids
    ]
    return {"object": "list", "data": data, "has_more": has_more}


def charge_refunded(ps=None, *, amount_refunded: int, refunds: list[tuple[str, int]], **kw):
    """charge.refunded with a cumulative amount and its refund list [(id, amount)]."""
    event = make_event("charge.refunded", ps, **kw)
    obj = event["data"]["object"]
    template = obj["refunds"]["data"][0]
    obj["amount_refunded"] = amount_refunded
    obj["refunded"] = amount_refunded >= obj["amount"]
    obj["refunds"]["data"] = [
        {**template, "id": rid, "amount": amount, "status": "succeeded"} for rid, amount in refunds
    ]
    obj["refunds"]["total_count"] = len(refunds)
    return event


def body_of(event: dict) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode()


def sign(body: bytes, secret: str = SECRET, timestamp: int | None = None) -> str:
    """The Stripe-Signature header, computed by the SDK's own helper."""
    return stripe.WebhookSignature.generate_signature_header(
        body.decode(), secret, timestamp=timestamp or int(time.time())
    )


def post_event(client, event: dict, *, secret: str = SECRET, timestamp: int | None = None):
    body = body_of(event)
    return post_raw(client, body, sign(body, secret, timestamp))


def post_raw(client, body: bytes, signature: str | None):
    headers = {"HTTP_STRIPE_SIGNATURE": signature} if signature is not None else {}
    return client.post(WEBHOOK_URL, data=body, content_type="application/json", **headers)
