"""History-proof operations: the per-minute counters equal the rows they summarise, and the
prune keeps everything unsettled while it deletes delivered history in bounded batches."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
import time_machine
from django.db import connection
from django.db.models import Sum
from django.utils import timezone

from outbox.models import Delivery, DeliveryAttempt, DeliveryStat, OutboxEvent
from outbox.retention import attempts_prune, events_prune, stats_prune
from outbox.routing import OPERATOR_TOPIC
from outbox.selectors import target_stats
from outbox.services import delivery_cancel, delivery_requeue
from tests.outbox.factories import make_target, publish
from tests.outbox.helpers import deliver_round


def _fail_marked(received, index):
    return (503, {}, "busy") if b'"fail"' in received.body else (200, {}, "ok")


def _totals() -> dict:
    return DeliveryStat.objects.aggregate(
        attempts=Sum("attempts"),
        ok=Sum("attempts_delivered"),
        retry=Sum("attempts_retry"),
        permanent=Sum("attempts_permanent"),
        delivered=Sum("delivered"),
        dead=Sum("dead"),
    )


def _attempt_counts() -> dict:
    rows = DeliveryAttempt.objects.all()
    return {
        "attempts": rows.count(),
        "ok": rows.filter(outcome="delivered").count(),
        "retry": rows.filter(outcome="retry").count(),
        "permanent": rows.filter(outcome="permanent").count(),
    }


@pytest.mark.django_db
def test_counters_equal_the_rows_after_deliver_dead_and_requeue(tenant, receiver):
    receiver.answer = _fail_marked
    make_target(tenant, name="ok", url=receiver.url)
    make_target(tenant, name="flaky", url=receiver.url, max_attempts=1)
    publish(tenant, n=5, target="ok")
    publish(tenant, n=3, target="flaky", payload={"fail": True})
    while deliver_round():
        pass

    totals = _totals()
    assert {k: totals[k] for k in ("attempts", "ok", "retry", "permanent")} == _attempt_counts()
    assert totals["delivered"] == Delivery.objects.filter(status="delivered").count() == 5
    assert totals["dead"] == Delivery.objects.filter(status="dead").count() == 3
    # every attempt's duration is in the histogram (+Inf = count)
    assert sum(s.duration_le[-1] for s in DeliveryStat.objects.all()) == totals["attempts"]
    assert sum(s.latency_le[-1] for s in DeliveryStat.objects.all()) == 5

    receiver.answer = None  # the receiver recovers; staff requeue the dead ones
    assert delivery_requeue(deliveries=Delivery.objects.filter(status="dead")) == 3
    while deliver_round():
        pass
    totals = _totals()
    assert {k: totals[k] for k in ("attempts", "ok", "retry", "permanent")} == _attempt_counts()
    assert totals["attempts"] == 11
    assert totals["delivered"] == Delivery.objects.filter(status="delivered").count() == 8
    assert totals["dead"] == 3  # they died once: activity, not state
    flaky = next(row for row in target_stats() if row["target"] == "flaky")
    assert flaky["delivered_24h"] == 3 and flaky["success_rate_24h"] == 0.5


@pytest.mark.django_db
def test_cancelled_deliveries_count_no_activity(tenant, receiver):
    make_target(tenant, name="ok", url=receiver.url)
    publish(tenant, n=4, target="ok")
    assert delivery_cancel(deliveries=Delivery.objects.all()) == 4
    assert deliver_round() == 0
    assert not DeliveryStat.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_counters_stay_exact_with_workers_recording_concurrently(tenant, receiver, settings):
    """Four threads, each its own Deliverer and database connection, recording verdicts for
    the same two targets at once: the upserts wait for each other, none is lost, and the
    ordered upsert never deadlocks."""
    settings.OUTBOX_BATCH_SIZE = 10  # many small claims: the threads interleave
    settings.OUTBOX_CIRCUIT_FAILURES = 1000  # b's failures must not open its circuit here
    receiver.answer = _fail_marked
    make_target(tenant, name="a", url=receiver.url)
    make_target(tenant, name="b", url=receiver.url, max_attempts=1)
    publish(tenant, n=120, target="a")
    publish(tenant, n=60, target="b", payload={"fail": True})
    errors: list[BaseException] = []

    def work():
        try:
            for _ in range(40):
                if deliver_round(concurrency=8) == 0:
                    break
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    while deliver_round():
        pass
    assert not errors
    totals = _totals()
    assert {k: totals[k] for k in ("attempts", "ok", "retry", "permanent")} == _attempt_counts()
    assert totals["delivered"] == Delivery.objects.filter(status="delivered").count() == 120
    assert totals["dead"] == Delivery.objects.filter(status="dead").count() == 60
    assert totals["attempts"] == 180  # each delivery tried exactly once


# --- the prune ----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_prune_goes_in_bounded_batches_and_keeps_open_dead_and_cancelled(tenant, receiver):
    receiver.answer = _fail_marked
    make_target(tenant, name="ok", url=receiver.url)
    make_target(tenant, name="flaky", url=receiver.url, max_attempts=1)
    with time_machine.travel(timezone.now() - timedelta(days=40), tick=False):
        old = publish(tenant, n=7, target="ok")
        dead = publish(tenant, n=1, target="flaky", payload={"fail": True})[0]
        while deliver_round():
            pass
        cancelled, waiting = publish(tenant, n=2, target="ok")
        delivery_cancel(deliveries=Delivery.objects.filter(event=cancelled))
    Delivery.objects.filter(event=waiting).update(next_attempt_at=timezone.now() + timedelta(1))
    recent = publish(tenant, n=2, target="ok")
    deliver_round()
    stats_before = _totals()

    batches = []
    pruned = events_prune(older_than_days=30, batch_size=3, progress=batches.append)

    # the 7 delivered ones, and Atlas's `delivery.dead` notice about `flaky`, which no target
    # subscribed to (routed nowhere, so prunable like a delivered event)
    assert pruned == 8
    assert len(batches) >= 4  # 13 events, 3 per statement: never one big delete
    kept = set(OutboxEvent.objects.values_list("id", flat=True))
    assert kept == {dead.id, cancelled.id, waiting.id, *(e.id for e in recent)}
    assert not kept & {e.id for e in old}
    assert set(Delivery.objects.values_list("status", flat=True)) == {
        "dead",
        "cancelled",
        "pending",
        "delivered",
    }
    # the dead delivery's tries stay as evidence; the pruned ones' went with them
    assert DeliveryAttempt.objects.filter(delivery__event=dead).count() == 1
    assert DeliveryAttempt.objects.count() == 3
    assert _totals() == stats_before  # counters are activity: a prune does not rewrite it


@pytest.mark.django_db
def test_attempts_prune_keeps_the_tries_of_unsettled_deliveries(tenant, receiver):
    receiver.answer = _fail_marked
    make_target(tenant, name="ok", url=receiver.url)
    make_target(tenant, name="flaky", url=receiver.url, max_attempts=1)
    with time_machine.travel(timezone.now() - timedelta(days=20), tick=False):
        publish(tenant, n=4, target="ok")
        dead = publish(tenant, n=1, target="flaky", payload={"fail": True})[0]
        while deliver_round():
            pass
    publish(tenant, n=1, target="ok")
    deliver_round()
    assert DeliveryAttempt.objects.count() == 6

    assert attempts_prune(older_than_days=14, batch_size=2) == 4
    left = DeliveryAttempt.objects.all()
    assert left.count() == 2 and left.filter(delivery__event=dead).count() == 1
    # events stay until OUTBOX_PRUNE_DAYS (Atlas's delivery.dead notice aside)
    assert OutboxEvent.objects.exclude(topic=OPERATOR_TOPIC).count() == 6


@pytest.mark.django_db
def test_stats_prune_drops_only_old_minutes(tenant, receiver):
    make_target(tenant, name="ok", url=receiver.url)
    with time_machine.travel(timezone.now() - timedelta(hours=72), tick=False):
        publish(tenant, n=1, target="ok")
        deliver_round()
    publish(tenant, n=1, target="ok")
    deliver_round()
    assert DeliveryStat.objects.count() == 2
    assert stats_prune(older_than_hours=48) == 1
    assert DeliveryStat.objects.get().minute > timezone.now() - timedelta(hours=1)
