"""Operator events: Atlas tells a tenant's subscribed targets, through its own outbox, when
one of its targets breaks or recovers; never the target itself, never in a loop. Real HTTP
receivers on 127.0.0.1."""

import json
from datetime import timedelta

import pytest
import time_machine
from django.utils import timezone

from outbox import operator_events
from outbox.models import Delivery, OutboxEvent, Target
from outbox.services import target_pause, target_resume
from outbox.tasks import outbox_sweep
from tests.outbox.factories import make_target, publish
from tests.outbox.helpers import deliver_round, open_count
from tests.outbox.receiver import start_receiver

pytestmark = pytest.mark.django_db

OPS = ["target.*", "delivery.dead"]


@pytest.fixture
def ops_receiver():
    state, server = start_receiver()
    yield state
    server.shutdown()
    server.server_close()


def _operator_bodies(receiver) -> list[dict]:
    return [r.json() for r in receiver.requests if r.json()["topic"] == "operator"]


def _drain(rounds=6):
    """Deliver until nothing is due (each round is one claim-send-record)."""
    for _ in range(rounds):
        if not deliver_round():
            return


def test_circuit_opened_goes_to_subscribers_never_to_the_failing_target(
    tenant, receiver, ops_receiver, settings
):
    settings.OUTBOX_CIRCUIT_FAILURES = 2
    make_target(tenant, "n8n", url=receiver.url, event_types=["*", *OPS])
    make_target(tenant, "ops", url=ops_receiver.url, event_types=OPS)
    make_target(tenant, "everything", url=ops_receiver.url.replace("/hook", "/all"))
    receiver.answer = lambda r, i: (503, {}, "down")
    publish(tenant, n=2, event_type="assessment.submitted")
    deliver_round()
    assert Target.objects.get(name="n8n").circuit_state == "open"
    _drain()
    opened = _operator_bodies(ops_receiver)
    assert [b["eventType"] for b in opened] == ["target.circuit_opened"]
    assert opened[0]["payload"]["target"] == "n8n"
    assert opened[0]["payload"]["reason"] == "http_503"
    # the failing target got only its two business events; `*` does not take operator events
    assert all(r.json()["topic"] != "operator" for r in receiver.requests)
    event = OutboxEvent.objects.get(event_type="target.circuit_opened")
    assert sorted(event.deliveries.values_list("target__name", flat=True)) == ["ops"]


def test_circuit_closed_after_the_probe_succeeds(tenant, receiver, ops_receiver, settings):
    settings.OUTBOX_CIRCUIT_FAILURES = 1
    settings.OUTBOX_CIRCUIT_CLOSE_SUCCESSES = 1
    make_target(tenant, "n8n", url=receiver.url, event_types=["thing.*"])
    make_target(tenant, "ops", url=ops_receiver.url, event_types=["target.circuit_closed"])
    receiver.answer = lambda r, i: (500, {}, "") if i == 0 else (200, {}, "ok")
    publish(tenant, n=1)
    with time_machine.travel(timezone.now(), tick=False) as clock:
        deliver_round()
        assert Target.objects.get(name="n8n").circuit_state == "open"
        clock.shift(120)
        Delivery.objects.update(next_attempt_at=timezone.now())
        _drain()
    assert Target.objects.get(name="n8n").circuit_state == "closed"
    assert [b["eventType"] for b in _operator_bodies(ops_receiver)] == ["target.circuit_closed"]
    assert _operator_bodies(ops_receiver)[0]["payload"]["target"] == "n8n"


def test_410_pauses_and_resume_recovers_each_told_once(tenant, receiver, ops_receiver):
    target = make_target(tenant, "n8n", url=receiver.url, event_types=["thing.*"])
    make_target(tenant, "ops", url=ops_receiver.url, event_types=OPS)
    receiver.answer = lambda r, i: (410, {}, "gone")
    publish(tenant)
    _drain()
    assert target_pause(target=target) is False  # paused already (by the 410): no second event
    assert target_resume(target=target) is True
    assert target_pause(target=target, reason="maintenance") is True
    _drain()
    bodies = _operator_bodies(ops_receiver)
    dead = [b for b in bodies if b["eventType"] == "delivery.dead"]
    assert [b["payload"]["count"] for b in dead] == [1]  # the 410'd delivery itself
    bodies = [b for b in bodies if b["eventType"] != "delivery.dead"]
    assert sorted((b["eventType"], b["payload"]["reason"]) for b in bodies) == [
        ("target.paused", "410 Gone from the receiver"),
        ("target.paused", "maintenance"),
        ("target.recovered", "resumed by staff"),
    ]


def test_delivery_dead_is_one_notice_per_window_with_a_count(tenant, receiver, ops_receiver):
    make_target(tenant, "n8n", url=receiver.url, event_types=["thing.*"], permanent_statuses=[400])
    make_target(tenant, "ops", url=ops_receiver.url, event_types=["delivery.dead"])
    receiver.answer = lambda r, i: (400, {}, "bad")
    with time_machine.travel(timezone.now(), tick=False) as clock:
        publish(tenant, n=3)
        _drain()
        notices = _operator_bodies(ops_receiver)
        assert [(b["eventType"], b["payload"]["count"]) for b in notices] == [("delivery.dead", 3)]
        assert notices[0]["payload"]["lastError"] == "http_400"
        clock.shift(60)
        publish(tenant, n=2)  # inside the window: no notice now
        _drain()
        assert len(_operator_bodies(ops_receiver)) == 1
        clock.shift(10 * 60)
        outbox_sweep(seconds=5)  # the window ended: the two get their notice, unprompted
        _drain()
        counts = [b["payload"]["count"] for b in _operator_bodies(ops_receiver)]
        assert counts == [3, 2]
        clock.shift(11 * 60)
        outbox_sweep(seconds=5)  # nothing new died: nothing more is said
        _drain()
    assert len(_operator_bodies(ops_receiver)) == 2
    assert OutboxEvent.objects.filter(event_type="delivery.dead").count() == 2


def test_dead_operator_events_do_not_cascade(tenant, receiver, ops_receiver):
    """A and B each listen to the other's trouble and both refuse everything: the notice about
    A dies at B and the notice about B dies at A; neither death is told again."""
    everything = ["*", *OPS]
    make_target(tenant, "a", url=receiver.url, event_types=everything, permanent_statuses=[400])
    make_target(tenant, "b", url=ops_receiver.url, event_types=everything, permanent_statuses=[400])
    receiver.answer = ops_receiver.answer = lambda r, i: (400, {}, "no")
    with time_machine.travel(timezone.now(), tick=False) as clock:
        publish(tenant)
        for _ in range(4):
            _drain()
            clock.shift(11 * 60)
            outbox_sweep(seconds=5)
        assert open_count() == 0
    notices = OutboxEvent.objects.filter(event_type="delivery.dead")
    about = sorted(e.payload["target"] for e in notices)
    assert about == ["a", "b"]  # one each, for the business event; none for the notices
    for event in notices:
        assert list(event.deliveries.values_list("target__name", flat=True)) != [
            event.payload["target"]
        ]
    assert Delivery.objects.count() == 4  # 2 business + 2 notices, each to the other one


def test_slack_formats_operator_events_as_short_sentences(tenant, receiver, ops_receiver):
    target = make_target(tenant, "n8n", url=receiver.url, event_types=["thing.*"])
    make_target(tenant, "alerts", kind="slack", url=ops_receiver.url, event_types=OPS)
    target_pause(target=target, reason="<!channel> maintenance")
    operator_events.dead_notices_publish(target_ids=[])  # nothing to say: no event
    _drain()
    texts = [json.loads(r.body)["text"] for r in ops_receiver.requests]
    assert texts == [
        ":double_vertical_bar: Target *n8n* paused: deliveries wait until resumed "
        "(&lt;!channel&gt; maintenance)"
    ]


def test_slack_dead_notice_text():
    from outbox.delivery.send import operator_slack_text

    text = operator_slack_text(
        "delivery.dead", {"target": "n8n", "count": 4, "windowMinutes": 10, "lastError": "http_400"}
    )
    assert text == ":skull: Target *n8n*: 4 deliveries dead-lettered in 10 min (http_400)"


def test_notice_slot_is_taken_once_under_concurrency(tenant):
    """Two workers recording deaths of one target at once: one notice (the slot is an UPDATE
    under the row lock)."""
    target = make_target(tenant, "n8n", event_types=["thing.*"])
    make_target(tenant, "ops", event_types=["delivery.dead"])
    publish(tenant, n=2)
    Delivery.objects.filter(target=target).update(status="dead")
    now = timezone.now()
    assert operator_events.dead_notices_publish(target_ids=[target.id], now=now) == 1
    assert operator_events.dead_notices_publish(target_ids=[target.id], now=now) == 0
    assert OutboxEvent.objects.get(event_type="delivery.dead").payload["count"] == 2
    assert timedelta(0) <= timezone.now() - Target.objects.get(pk=target.pk).dead_notice_at


def test_a_refused_notice_never_undoes_the_change_it_reports(tenant, monkeypatch):
    """The pause stays even when its operator event cannot be written; the reason that goes
    out is one printable line."""
    from core.errors import DomainError
    from outbox import services

    target = make_target(tenant, "n8n", event_types=["thing.*"])
    make_target(tenant, "ops", event_types=OPS)
    assert target_pause(target=target, reason="line one\nline two") is True
    event = OutboxEvent.objects.get(event_type="target.paused")
    assert event.payload["reason"] == "line one line two"

    def refuse(**kwargs):
        raise DomainError("payload_too_large", "no")

    monkeypatch.setattr(services, "event_publish_created", refuse)
    assert target_resume(target=target) is True
    assert Target.objects.get(pk=target.pk).paused_at is None
    assert not OutboxEvent.objects.filter(event_type="target.recovered").exists()
