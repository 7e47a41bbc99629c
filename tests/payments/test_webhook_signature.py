"""The webhook accepts only bodies signed by a configured secret within the tolerance."""

from __future__ import annotations

import time

import pytest

from outbox.models import OutboxEvent
from payments.models import PaymentSession, StripeEvent
from tests.payments.factories import (
    OLD_SECRET,
    SECRET,
    body_of,
    make_event,
    post_event,
    post_raw,
    sign,
)
from tests.tenancy import assert_error

pytestmark = pytest.mark.django_db


def _nothing_processed(payment):
    assert StripeEvent.objects.count() == 0
    assert OutboxEvent.objects.count() == 0
    payment.refresh_from_db()
    assert payment.status == PaymentSession.Status.PENDING


def test_valid_signature_is_processed_without_api_key_or_csrf(webhook_client, payment):
    response = post_event(webhook_client, make_event("checkout.session.completed", payment))
    assert response.status_code == 200, response.content
    assert response.json() == {"received": True, "duplicate": False, "status": "processed"}
    payment.refresh_from_db()
    assert payment.status == "completed"
    assert StripeEvent.objects.get().status == "processed"


def test_forged_body_is_refused_and_nothing_processed(webhook_client, payment):
    event = make_event("checkout.session.completed", payment)
    header = sign(body_of(event))
    event["data"]["object"]["amount_total"] = 1  # tampered after signing
    assert_error(post_raw(webhook_client, body_of(event), header), 400, "invalid_signature")
    _nothing_processed(payment)


def test_missing_signature_is_refused(webhook_client, payment):
    body = body_of(make_event("checkout.session.completed", payment))
    assert_error(post_raw(webhook_client, body, None), 400, "missing_signature")
    assert_error(post_raw(webhook_client, body, "garbage"), 400, "invalid_signature")
    _nothing_processed(payment)


def test_wrong_secret_is_refused(webhook_client, payment):
    event = make_event("checkout.session.completed", payment)
    response = post_event(webhook_client, event, secret="whsec_someone_else")
    assert_error(response, 400, "invalid_signature")
    _nothing_processed(payment)


def test_stale_timestamp_is_refused(webhook_client, payment):
    event = make_event("checkout.session.completed", payment)
    response = post_event(webhook_client, event, timestamp=int(time.time()) - 301)
    assert_error(response, 400, "stale_signature")
    _nothing_processed(payment)


def test_timestamp_inside_tolerance_is_accepted(webhook_client, payment):
    event = make_event("checkout.session.completed", payment)
    response = post_event(webhook_client, event, timestamp=int(time.time()) - 240)
    assert response.status_code == 200, response.content


def test_tolerance_comes_from_settings(webhook_client, payment, settings):
    settings.STRIPE_WEBHOOK_TOLERANCE_SECONDS = 60
    event = make_event("checkout.session.completed", payment)
    response = post_event(webhook_client, event, timestamp=int(time.time()) - 120)
    assert_error(response, 400, "stale_signature")


def test_rotated_secrets_are_both_accepted_and_a_retired_one_is_not(
    webhook_client, payment, settings
):
    first = make_event("checkout.session.expired", payment)
    assert post_event(webhook_client, first, secret=OLD_SECRET).status_code == 200
    second = make_event("checkout.session.completed", payment)
    assert post_event(webhook_client, second, secret=SECRET).status_code == 200
    settings.STRIPE_WEBHOOK_SECRET = [SECRET]  # rotation finished: the old one is retired
    third = make_event("checkout.session.completed", payment)
    assert_error(post_event(webhook_client, third, secret=OLD_SECRET), 400, "invalid_signature")
    assert StripeEvent.objects.count() == 2


def test_header_with_several_signatures_matches_any(webhook_client, payment):
    body = body_of(make_event("checkout.session.completed", payment))
    ts = int(time.time())
    other = sign(body, "whsec_unrelated", ts).split(",")[1]
    header = f"{sign(body, SECRET, ts)},{other}"
    assert post_raw(webhook_client, body, header).status_code == 200


def test_unconfigured_secret_refuses_everything(webhook_client, payment, settings):
    settings.STRIPE_WEBHOOK_SECRET = []
    response = post_event(webhook_client, make_event("checkout.session.completed", payment))
    assert_error(response, 503, "webhook_not_configured")
    _nothing_processed(payment)


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[1, 2]", b'{"id": "evt_1", "type": "x"}', b'{"id": "", "type": "x"}'],
)
def test_signed_but_malformed_event_is_refused(webhook_client, payment, body):
    assert_error(post_raw(webhook_client, body, sign(body)), 400, "malformed_event")
    _nothing_processed(payment)


def test_get_is_not_allowed(webhook_client):
    assert_error(webhook_client.get("/api/payments/stripe/webhook"), 405, "method_not_allowed")


def test_oversized_body_is_refused(webhook_client, payment, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 2048
    event = make_event("checkout.session.completed", payment)
    event["data"]["object"]["padding"] = "x" * 4096
    assert_error(post_event(webhook_client, event), 413, "payload_too_large")
    _nothing_processed(payment)


def test_refusals_are_counted_per_day_and_code_for_the_admin(webhook_client, payment):
    from payments.models import WebhookRejection

    event = make_event("checkout.session.completed", payment)
    for _ in range(3):
        post_event(webhook_client, event, secret="whsec_rotated_away")
    post_event(webhook_client, event, timestamp=int(time.time()) - 900)
    post_raw(webhook_client, b"{}", None)
    counts = dict(WebhookRejection.objects.values_list("code", "count"))
    assert counts == {"invalid_signature": 3, "stale_signature": 1, "missing_signature": 1}
    assert WebhookRejection.objects.count() == 3  # bounded: one row per day and code
    _nothing_processed(payment)
