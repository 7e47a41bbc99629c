"""Circuit breaker, flaky and dead receivers, leases and the sweep (time controlled)."""

import random
from datetime import timedelta

import pytest
import time_machine
from django.utils import timezone

from outbox.delivery import Batch, Deliverer
from outbox.models import CircuitTransition, Delivery, DeliveryAttempt, Target
from outbox.tasks import outbox_sweep
from tests.outbox.factories import make_target, publish
from tests.outbox.helpers import deliver_round, free_port, open_count
from tests.outbox.receiver import start_receiver

pytestmark = pytest.mark.django_db


def transitions(target):
    return list(
        CircuitTransition.objects.filter(target=target)
        .order_by("created_at", "id")
        .values_list("from_state", "to_state")
    )


def test_circuit_opens_half_opens_with_one_probe_and_closes(tenant, receiver, settings):
    settings.OUTBOX_TARGET_MAX_IN_FLIGHT = 8  # one round sends all five (the cap is not tested)
    target = make_target(tenant, url=receiver.url)
    receiver.answer = lambda r, i: (500, {}, "")
    publish(tenant, n=5)
    with time_machine.travel(timezone.now(), tick=False) as clock:
        deliver_round()
        target.refresh_from_db()
        assert (target.circuit_state, target.circuit_failures) == ("open", 5)
        publish(tenant, n=3)
        clock.shift(30)  # still open: nothing is tried, no attempt is used up
        assert deliver_round() == 0
        assert Delivery.objects.filter(attempts=0).count() == 3
        receiver.answer = None  # the receiver recovers
        clock.shift(100)  # open period over, first retries due
        for expected in ("half_open", "half_open", "closed"):
            assert deliver_round() == 1  # exactly one probe at a time
            target.refresh_from_db()
            assert target.circuit_state == expected
        assert deliver_round() > 1  # closed again: full batches
    assert transitions(target) == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ]


def test_failed_probe_reopens_the_circuit(tenant, receiver, settings):
    settings.OUTBOX_TARGET_MAX_IN_FLIGHT = 8  # one round sends all five (the cap is not tested)
    target = make_target(tenant, url=receiver.url)
    receiver.answer = lambda r, i: (503, {}, "")
    publish(tenant, n=5)
    with time_machine.travel(timezone.now(), tick=False) as clock:
        deliver_round()
        clock.shift(120)
        assert deliver_round() == 1
        target.refresh_from_db()
        assert target.circuit_state == "open"
        assert deliver_round() == 0
    assert transitions(target)[-2:] == [("open", "half_open"), ("half_open", "open")]


def test_a_receiver_failing_30_percent_at_random_gets_every_event(tenant, receiver):
    rng = random.Random(30)
    receiver.answer = lambda r, i: (500 if rng.random() < 0.3 else 200, {}, "")
    make_target(tenant, url=receiver.url)
    events = publish(tenant, n=60)
    with time_machine.travel(timezone.now(), tick=False) as clock:
        for _ in range(200):
            deliver_round()
            if not open_count():
                break
            clock.shift(600)
    assert open_count() == 0
    assert set(Delivery.objects.values_list("status", flat=True)) == {"delivered"}
    delivered_ids = {r.headers["webhook-id"] for r in receiver.requests if r}
    assert delivered_ids == {str(e.id) for e in events}
    failures = DeliveryAttempt.objects.filter(outcome="retry").count()
    assert failures > 5  # the receiver really failed along the way


def test_a_receiver_down_for_hours_gets_everything_after_recovery(tenant):
    port = free_port()
    make_target(tenant, url=f"http://127.0.0.1:{port}/hook")
    events = publish(tenant, n=10)
    with time_machine.travel(timezone.now(), tick=False) as clock:
        for _ in range(12):  # three hours of outage
            deliver_round()
            clock.shift(900)
        assert Delivery.objects.filter(status="delivered").count() == 0
        assert Delivery.objects.filter(status="dead").count() == 0  # breaker saved attempts
        # the receiver comes back on the same port
        state, server = _receiver_on(port)
        try:
            for _ in range(40):
                deliver_round()
                if not open_count():
                    break
                clock.shift(3600)
        finally:
            server.shutdown()
            server.server_close()
    assert {r.headers["webhook-id"] for r in state.requests} == {str(e.id) for e in events}
    assert open_count() == 0


def _receiver_on(port):
    from http.server import ThreadingHTTPServer

    state, server = start_receiver()
    server.shutdown()
    server.server_close()
    handler = server.RequestHandlerClass
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    import threading

    threading.Thread(target=server.serve_forever, daemon=True).start()
    return state, server


def test_a_held_lease_is_never_delivered_by_another_round(tenant, receiver, settings):
    settings.OUTBOX_LEASE_SECONDS = 30
    make_target(tenant, url=receiver.url)
    publish(tenant, n=3)
    holder = Deliverer(concurrency=2, worker_id="holder")
    try:
        now = timezone.now()
        claimed = holder._claim(now, "holder:1", 30, 10, "closed", None)
        assert len(claimed) == 3
        assert deliver_round() == 0  # another worker finds nothing
        assert outbox_sweep(seconds=2) == 0  # nor does the django-q2 sweep
        assert receiver.requests == []
        with time_machine.travel(now + timedelta(seconds=31), tick=False):
            assert deliver_round() == 3  # lease expired: someone else delivers
            late = holder.collect(holder.submit(Batch("holder:1", claimed)))
            holder.record(late)  # the late holder's verdict is fenced out
    finally:
        holder.close()
    assert Delivery.objects.filter(status="delivered", attempts=1).count() == 3
    assert len(receiver.requests) == 6  # only because the lease expired


def test_sweep_delivers_when_no_worker_runs(tenant, receiver):
    make_target(tenant, url=receiver.url)
    publish(tenant, n=5)
    assert outbox_sweep(seconds=5) == 5
    assert Delivery.objects.filter(status="delivered").count() == 5


def test_slack_gets_a_readable_message_and_429_is_retried_after(tenant, receiver):
    make_target(tenant, "slack", kind="slack", url=receiver.url)
    publish(
        tenant,
        event_type="payment.completed",
        topic="payments",
        payload={"amount": 4900, "currency": "eur", "nested": {"x": 1}},
    )
    receiver.answer = lambda r, i: (429, {"Retry-After": "30"}, "rate_limited")
    before = timezone.now()
    deliver_round()
    text = receiver.requests[0].json()["text"]
    assert text.splitlines()[0] == "*[payments] payment.completed*"
    assert "• amount: 4900" in text and "• currency: eur" in text and "nested" not in text
    delivery = Delivery.objects.get()
    assert delivery.status == "retrying"
    assert 29 <= (delivery.next_attempt_at - before).total_seconds() <= 32


@pytest.mark.parametrize("status,outcome,paused", [(404, "retrying", False), (410, "dead", True)])
def test_slack_404_is_retried_and_410_is_dead_and_pauses(tenant, receiver, status, outcome, paused):
    make_target(tenant, "slack", kind="slack", url=receiver.url)
    receiver.answer = lambda r, i: (status, {}, "channel_is_archived")
    publish(tenant)
    deliver_round()
    assert Delivery.objects.get().status == outcome
    assert (Target.objects.get().paused_at is not None) is paused


def test_slack_rate_limit_spaces_sends_and_hands_back_the_rest(tenant, receiver):
    make_target(tenant, "slack", kind="slack", url=receiver.url, rate_limit_per_second=2)
    publish(tenant, n=6)
    deliver_round()
    sent = len(receiver.requests)
    assert 2 <= sent <= 4  # about a second's worth
    deferred = Delivery.objects.filter(status="pending", attempts=0)
    assert deferred.count() == 6 - sent
    assert DeliveryAttempt.objects.count() == sent  # deferral uses no attempt
    times = sorted(r.at for r in receiver.requests)
    assert times[-1] - times[0] >= 0.4


def test_slack_429_retry_after_holds_back_every_send_to_that_target(tenant, receiver):
    make_target(tenant, "slack", kind="slack", url=receiver.url, rate_limit_per_second=10)
    receiver.answer = lambda r, i: (429, {"Retry-After": "30"}, "rate_limited")
    publish(tenant)
    deliver_round()
    receiver.answer = None
    publish(tenant, n=3)  # due now, but Slack asked for 30 s of quiet
    deliver_round()
    assert len(receiver.requests) == 1
    assert DeliveryAttempt.objects.count() == 1  # the held-back ones used no attempt
    waiting = Delivery.objects.filter(attempts=0)
    assert waiting.count() == 3
    assert all(d.next_attempt_at > timezone.now() + timedelta(seconds=25) for d in waiting)


def test_absurd_rate_limits_and_retry_after_values_never_break_a_round(tenant, receiver):
    make_target(tenant, "fast", kind="slack", url=receiver.url, rate_limit_per_second=1e12)
    publish(tenant, n=3, target="fast")
    assert deliver_round() == 3
    assert Delivery.objects.filter(status="delivered").count() == 3

    slow = make_target(tenant, "slack", kind="slack", url=receiver.url)
    receiver.answer = lambda r, i: (429, {"Retry-After": "99999999999"}, "rate_limited")
    publish(tenant, target="slack")
    deliver_round()
    slow.refresh_from_db()
    assert slow.rate_next_at <= timezone.now() + timedelta(hours=6, minutes=1)  # capped
    receiver.answer = None
    publish(tenant, target="slack")
    deliver_round()  # held back by the slot, no error
    assert DeliveryAttempt.objects.filter(delivery__target=slow).count() == 1


def test_a_probe_held_back_by_the_rate_limit_frees_the_probe_at_once(tenant, receiver):
    target = make_target(tenant, "slack", kind="slack", url=receiver.url)
    now = timezone.now()
    Target.objects.filter(pk=target.pk).update(
        circuit_state="open",
        circuit_opened_at=now - timedelta(seconds=61),
        rate_next_at=now + timedelta(seconds=30),  # Slack asked for quiet
    )
    publish(tenant)
    deliver_round()
    target.refresh_from_db()
    assert receiver.requests == [] and DeliveryAttempt.objects.count() == 0
    assert (target.circuit_state, target.circuit_probe_until) == ("half_open", None)
