"""Delivery rounds against a real HTTP receiver on 127.0.0.1, time controlled."""

import time
from datetime import timedelta

import pytest
import time_machine
from django.utils import timezone
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from outbox.models import Delivery, DeliveryAttempt, Target
from outbox.services import target_rotate_secret
from tests.outbox.factories import make_target, publish
from tests.outbox.helpers import deliver_round

pytestmark = pytest.mark.django_db


def answer(status, headers=None, body=""):
    return lambda received, index: (status, headers or {}, body)


def test_webhook_is_signed_and_verified_by_standardwebhooks(tenant, receiver):
    target = make_target(tenant, url=receiver.url)
    event = publish(tenant, event_type="order.paid", topic="payments", idempotency_key="k-1")[0]
    assert deliver_round() == 1
    (request,) = receiver.requests
    body = Webhook(target.secret).verify(request.body, request.headers)
    assert body == {
        "id": str(event.id),
        "topic": "payments",
        "eventType": "order.paid",
        "payload": {"n": 0},
        "tenantId": str(tenant.id),
        "occurredAt": event.occurred_at.isoformat().replace("+00:00", "Z"),
    }
    assert request.headers["webhook-id"] == str(event.id)
    assert request.headers["x-event-type"] == "order.paid"
    assert request.headers["x-idempotency-key"] == "k-1"
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + "A" * 44).verify(request.body, request.headers)
    delivery = Delivery.objects.get()
    assert (delivery.status, delivery.attempts) == ("delivered", 1)
    attempt = DeliveryAttempt.objects.get()
    # a loopback receiver's body is not kept: excerpts come from public addresses only
    assert (attempt.status_code, attempt.outcome, attempt.response_excerpt) == (
        200,
        "delivered",
        "",
    )


def test_both_secrets_sign_while_a_secret_rotates(tenant, receiver):
    old = make_target(tenant, url=receiver.url).secret
    new = target_rotate_secret(tenant_id=tenant.id, name="hook").secret
    publish(tenant)
    deliver_round()
    (request,) = receiver.requests
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    Webhook(old).verify(request.body, request.headers)
    Webhook(new).verify(request.body, request.headers)


def test_expired_previous_secret_no_longer_signs(tenant, receiver):
    make_target(tenant, url=receiver.url)
    target_rotate_secret(tenant_id=tenant.id, name="hook")
    publish(tenant)
    with time_machine.travel(timezone.now() + timedelta(hours=25)):
        deliver_round()
    assert len(receiver.requests[0].headers["webhook-signature"].split(" ")) == 1


@pytest.mark.parametrize("status", [408, 425, 429, 500, 502, 503])
def test_retryable_statuses_schedule_a_retry_with_jittered_backoff(tenant, receiver, status):
    make_target(tenant, url=receiver.url)
    receiver.answer = answer(status, body="busy")
    publish(tenant)
    before = timezone.now()
    deliver_round()
    delivery = Delivery.objects.get()
    assert (delivery.status, delivery.attempts) == ("retrying", 1)
    delay = (delivery.next_attempt_at - before).total_seconds()
    assert 0.8 * 60 - 1 <= delay <= 1.2 * 60 + 1
    assert DeliveryAttempt.objects.get().status_code == status
    assert delivery.last_error == f"http_{status}"


@pytest.mark.parametrize("status", [300, 400, 401, 403, 404, 422])
def test_other_non_2xx_are_retried_receivers_are_briefly_not_ready(tenant, receiver, status):
    """n8n answers 404 while a workflow is being activated: the event must get there later."""
    make_target(tenant, url=receiver.url)
    receiver.answer = answer(status)
    publish(tenant)
    deliver_round()
    delivery = Delivery.objects.get()
    assert (delivery.status, delivery.attempts) == ("retrying", 1)
    assert delivery.last_error == f"http_{status}"
    assert DeliveryAttempt.objects.get().outcome == "retry"


def test_404_then_200_delivers_on_the_retry(tenant, receiver):
    make_target(tenant, url=receiver.url)
    receiver.answer = lambda r, i: (404, {}, "workflow not active") if i == 0 else (200, {}, "ok")
    publish(tenant)
    deliver_round()
    Delivery.objects.update(next_attempt_at=timezone.now())
    deliver_round()
    assert Delivery.objects.get().status == "delivered" and len(receiver.requests) == 2


@pytest.mark.parametrize("status", [400, 404, 422])
def test_statuses_the_target_marks_permanent_are_dead_at_once(tenant, receiver, status):
    target = make_target(tenant, url=receiver.url, permanent_statuses=[400, 404, 422])
    receiver.answer = answer(status)
    publish(tenant)
    deliver_round()
    delivery = Delivery.objects.get()
    assert (delivery.status, delivery.attempts) == ("dead", 1)
    target.refresh_from_db()
    assert target.paused_at is None and target.circuit_failures == 0


def test_410_is_dead_and_pauses_the_target(tenant, receiver):
    target = make_target(tenant, url=receiver.url)
    receiver.answer = answer(410)
    publish(tenant, n=1)
    deliver_round()
    publish(tenant, n=1)
    assert deliver_round() == 0  # paused: the next event waits
    target.refresh_from_db()
    assert target.paused_at is not None and "410" in target.paused_reason
    assert sorted(Delivery.objects.values_list("status", flat=True)) == ["dead", "pending"]


def test_retry_after_seconds_is_honoured_on_429(tenant, receiver):
    make_target(tenant, url=receiver.url)
    receiver.answer = answer(429, {"Retry-After": "120"})
    publish(tenant)
    before = timezone.now()
    deliver_round()
    delay = (Delivery.objects.get().next_attempt_at - before).total_seconds()
    assert 119 <= delay <= 122


def test_retry_after_http_date_is_honoured_on_503(tenant, receiver):
    from email.utils import format_datetime

    make_target(tenant, url=receiver.url)
    when = timezone.now() + timedelta(minutes=30)
    receiver.answer = answer(503, {"Retry-After": format_datetime(when, usegmt=True)})
    publish(tenant)
    deliver_round()
    assert abs((Delivery.objects.get().next_attempt_at - when).total_seconds()) < 3


def test_backoff_doubles_until_max_attempts_then_dead(tenant, receiver, settings):
    settings.OUTBOX_CIRCUIT_FAILURES = 100  # this test is about backoff, not the breaker
    make_target(tenant, url=receiver.url)
    receiver.answer = answer(500)
    publish(tenant)
    delays = []
    with time_machine.travel(timezone.now(), tick=False) as clock:
        for _ in range(8):
            deliver_round()
            delivery = Delivery.objects.get()
            if delivery.status == "dead":
                break
            delays.append((delivery.next_attempt_at - timezone.now()).total_seconds())
            clock.move_to(delivery.next_attempt_at)
    assert delivery.status == "dead" and delivery.attempts == 8
    assert len(delays) == 7 and len(receiver.requests) == 8
    for n, delay in enumerate(delays):
        assert 0.8 * 60 * 2**n <= delay <= 1.2 * 60 * 2**n, (n, delay)


def test_backoff_is_capped_and_configurable_per_target(tenant, receiver, settings):
    settings.OUTBOX_CIRCUIT_FAILURES = 100
    make_target(tenant, url=receiver.url, backoff_base_seconds=10, backoff_max_seconds=30)
    receiver.answer = answer(500)
    publish(tenant)
    delays = []
    with time_machine.travel(timezone.now(), tick=False) as clock:
        for _ in range(5):
            deliver_round()
            delivery = Delivery.objects.get()
            delays.append((delivery.next_attempt_at - timezone.now()).total_seconds())
            clock.move_to(delivery.next_attempt_at)
    assert 8 <= delays[0] <= 12 and 16 <= delays[1] <= 24
    assert all(d <= 30 for d in delays) and 24 <= delays[-1] <= 30


def test_jitter_spreads_within_twenty_percent():
    import random

    from core.backoff import backoff_seconds

    rng = random.Random(7)
    samples = [backoff_seconds(attempt=3, base=60, cap=21600, rng=rng) for _ in range(2000)]
    assert 192 <= min(samples) < 200 and 280 < max(samples) <= 288
    capped = [backoff_seconds(attempt=30, base=60, cap=21600, rng=rng) for _ in range(500)]
    assert 17280 <= min(capped) < 17500 and 21400 < max(capped) <= 21600  # spread, never above


def test_connection_refused_and_timeouts_are_retried(tenant, receiver):
    from tests.outbox.helpers import free_port

    make_target(tenant, "down", url=f"http://127.0.0.1:{free_port()}/x")
    make_target(tenant, "slow", url=receiver.url, timeout_seconds=0.2)
    receiver.delay = 1.0
    publish(tenant)
    deliver_round()
    errors = dict(Delivery.objects.values_list("target__name", "last_error"))
    assert set(Delivery.objects.values_list("status", flat=True)) == {"retrying"}
    assert errors == {"down": "connection_refused", "slow": "timeout"}


def test_max_attempts_per_target(tenant, receiver):
    make_target(tenant, url=receiver.url, max_attempts=1)
    receiver.answer = answer(500)
    publish(tenant)
    deliver_round()
    assert Delivery.objects.get().status == "dead"


def test_events_with_one_ordering_key_go_out_in_order(tenant, receiver, settings):
    make_target(tenant, url=receiver.url)
    events = publish(tenant, n=4, ordering_key="order-7")
    unordered = publish(tenant, n=1)[0]
    first_try = {str(events[0].id)}

    def answer_first_of_key_fails_once(received, index):
        event_id = received.headers["webhook-id"]
        failed = event_id in first_try
        first_try.discard(event_id)
        return (500 if failed else 200, {}, "")

    receiver.answer = answer_first_of_key_fails_once
    deliver_round()  # first of the key fails; the others of the key wait behind it
    assert sorted(receiver.ids()) == sorted([str(events[0].id), str(unordered.id)])
    with time_machine.travel(timezone.now() + timedelta(minutes=5), tick=False):
        for _ in range(6):
            deliver_round()
    keyed = [i for i in receiver.ids() if i != str(unordered.id)]
    assert keyed == [str(events[0].id)] + [str(e.id) for e in events]
    assert set(Delivery.objects.values_list("status", flat=True)) == {"delivered"}


def test_realtime_target_is_delivered_when_broadcast(tenant):
    make_target(tenant, "live", kind="realtime", url="")
    publish(tenant)
    deliver_round()
    assert Delivery.objects.get().status == "delivered"
    assert DeliveryAttempt.objects.get().outcome == "delivered"


def test_cancelled_delivery_is_not_sent(tenant, receiver):
    from outbox.services import delivery_cancel

    make_target(tenant, url=receiver.url)
    publish(tenant)
    assert delivery_cancel(deliveries=Delivery.objects.all()) == 1
    assert deliver_round() == 0 and receiver.requests == []


def test_cancel_while_on_the_wire_sticks_and_releases_the_lease(tenant, receiver):
    from outbox.delivery import Deliverer
    from outbox.services import delivery_cancel

    make_target(tenant, url=receiver.url)
    publish(tenant)
    deliverer = Deliverer(concurrency=2)
    try:
        batch = deliverer.submit(deliverer.claim())
        assert delivery_cancel(deliveries=Delivery.objects.all()) == 1  # staff, mid-send
        deliverer.record(deliverer.collect(batch))
    finally:
        deliverer.close()
    delivery = Delivery.objects.get()
    assert (delivery.status, delivery.locked_by, delivery.locked_until) == ("cancelled", "", None)
    assert DeliveryAttempt.objects.get().outcome == "delivered"  # the try is still evidence


def test_requeue_leaves_a_delivery_a_worker_holds_alone(tenant, receiver):
    from outbox.delivery import Deliverer
    from outbox.services import delivery_requeue

    make_target(tenant, url=receiver.url)
    publish(tenant)
    deliverer = Deliverer(concurrency=2)
    try:
        batch = deliverer.claim()
        token = batch.token
        assert delivery_requeue(deliveries=Delivery.objects.all()) == 0
        assert Delivery.objects.get().locked_by == token  # no second worker can take it
        deliverer.record(deliverer.collect(deliverer.submit(batch)))
    finally:
        deliverer.close()
    assert Delivery.objects.get().status == "delivered" and len(receiver.requests) == 1


@pytest.mark.parametrize("status", [200, 500])
def test_a_response_with_nul_bytes_is_recorded_not_a_stalled_round(
    tenant, receiver, status, monkeypatch
):
    from outbox.delivery import egress

    monkeypatch.setattr(egress, "address_is_public", lambda address: True)  # excerpt kept
    make_target(tenant, url=receiver.url)
    receiver.answer = answer(status, body="bad\x00body")
    publish(tenant)
    assert deliver_round() == 1
    attempt = DeliveryAttempt.objects.get()
    assert attempt.response_excerpt == "bad\ufffdbody" and attempt.status_code == status
    expected = "delivered" if status == 200 else "retrying"
    assert Delivery.objects.get().status == expected


def test_paused_target_holds_events_until_resumed(tenant, receiver):
    from outbox.services import target_pause, target_resume

    target = make_target(tenant, url=receiver.url)
    target_pause(target=target)
    publish(tenant, n=2)
    assert deliver_round() == 0
    target_resume(target=target)
    assert deliver_round() == 2 and len(receiver.requests) == 2
    assert Target.objects.get().paused_at is None


def test_failed_delivery_log_line_carries_tenant_event_and_target(tenant, receiver, caplog):
    import json
    import logging

    from core.logging import JsonFormatter

    target = make_target(tenant, url=receiver.url)
    receiver.answer = answer(500, body="boom")
    event = publish(tenant)[0]
    with caplog.at_level(logging.WARNING, logger="outbox.delivery"):
        assert deliver_round() == 1
    lines = [json.loads(JsonFormatter().format(r)) for r in caplog.records if "delivery" in r.msg]
    assert len(lines) == 1
    line = lines[0]
    assert line["tenant_id"] == str(tenant.id)
    assert line["event_id"] == str(event.id)
    assert line["target"] == str(target.id)
    assert line["outcome"] == "retry" and "status 500" in line["message"]


def deliver_while_another_worker_claims(*, concurrency: int, claim_after: float) -> int:
    """One deliverer claims, sends and records; another tries to claim `claim_after` s into
    the sends (in its own thread and connection). Returns how many rows the other one got."""
    import threading

    from django.db import connection

    from outbox.delivery import Deliverer

    first, second = Deliverer(concurrency=concurrency), Deliverer(concurrency=2)
    stolen = []

    def other_worker():
        time.sleep(claim_after)
        try:
            stolen.append(len(second.claim().jobs))
        finally:
            connection.close()  # this thread's own connection

    thief = threading.Thread(target=other_worker)
    try:
        batch = first.submit(first.claim())
        thief.start()
        first.record(first.collect(batch))
        thief.join()
    finally:
        first.close()
        second.close()
    return stolen[0]


@pytest.mark.django_db(transaction=True)
def test_a_slow_send_keeps_its_lease_so_no_other_worker_sends_it_too(tenant, receiver, settings):
    settings.OUTBOX_LEASE_SECONDS = 1
    make_target(tenant, url=receiver.url)
    publish(tenant)
    receiver.delay = 2.5  # the send outlasts the 1 s lease 2.5 times over
    assert deliver_while_another_worker_claims(concurrency=2, claim_after=1.6) == 0
    assert len(receiver.requests) == 1 and Delivery.objects.get().status == "delivered"
    assert Delivery.objects.get().locked_by == ""


@pytest.mark.django_db(transaction=True)
def test_leases_are_renewed_through_many_short_sends_in_waves(tenant, receiver, settings):
    """8 sends of 0.2 s through one thread take 1.6 s: no single wait outlasts a third of the
    1 s lease, yet the batch outlasts the lease; renewal goes by elapsed time."""
    settings.OUTBOX_LEASE_SECONDS = 1
    settings.OUTBOX_TARGET_MAX_IN_FLIGHT = 8  # one round holds all eight (not the cap's test)
    make_target(tenant, url=receiver.url)
    publish(tenant, n=8)
    receiver.delay = 0.2
    assert deliver_while_another_worker_claims(concurrency=1, claim_after=1.25) == 0
    assert len(receiver.requests) == 8 and Delivery.objects.filter(status="delivered").count() == 8


def test_recording_a_batch_twice_writes_its_attempts_once(tenant, receiver):
    from outbox.delivery import Deliverer

    make_target(tenant, url=receiver.url)
    publish(tenant, n=2)
    deliverer = Deliverer(concurrency=2)
    try:
        batch = deliverer.collect(deliverer.submit(deliverer.claim()))
        deliverer.record(batch)
        deliverer.record(batch)  # e.g. the worker retrying after a later statement failed
    finally:
        deliverer.close()
    assert DeliveryAttempt.objects.count() == 2 and not deliverer.held
