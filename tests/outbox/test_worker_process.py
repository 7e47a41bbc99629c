"""The real `manage.py outbox_worker` process: NOTIFY wake-up, SIGTERM, SIGKILL, two workers,
database connections dropped under it."""

import signal
import time

import pytest
from django.db import connection

from outbox.models import Delivery, DeliveryAttempt, WorkerHeartbeat
from tenants import rls
from tests.outbox.factories import make_target, publish
from tests.processes import manage_popen

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture
def workers():
    started = []

    def start(*args, **env):
        proc = manage_popen("outbox_worker", *args, **{"OUTBOX_LEASE_SECONDS": "60", **env})
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def wait_until(predicate, timeout=30.0, interval=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def delivered() -> int:
    return Delivery.objects.filter(status="delivered").count()


def test_worker_wakes_on_notify_long_before_its_poll(tenant, receiver, workers):
    make_target(tenant, url=receiver.url)
    workers("--poll", "60")
    assert wait_until(lambda: WorkerHeartbeat.objects.exists())
    time.sleep(0.5)  # let the first idle poll start: only a NOTIFY can wake it now
    publish(tenant, n=1)
    assert receiver.wait_for(1, timeout=15), "not woken by NOTIFY (poll is 60 s)"
    assert wait_until(lambda: delivered() == 1)


def test_sigterm_finishes_in_flight_deliveries_and_releases_leases(tenant, receiver, workers):
    make_target(tenant, url=receiver.url)
    receiver.delay = 1.5
    publish(tenant, n=5)
    # all five on the wire at once (the per-target cap is not what this tests)
    proc = workers("--poll", "60", "--concurrency", "8", OUTBOX_TARGET_MAX_IN_FLIGHT="8")
    assert receiver.wait_for(1, timeout=20)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0, proc.stdout.read()
    assert delivered() == 5  # in flight when SIGTERM came: finished and recorded
    assert not Delivery.objects.exclude(locked_by="").exists()
    assert WorkerHeartbeat.objects.get().stopped_at is not None


def test_sigkill_mid_batch_loses_nothing(tenant, receiver, workers):
    make_target(tenant, url=receiver.url)
    receiver.delay = 2.0
    events = publish(tenant, n=12)
    first = workers(  # all twelve leased and on the wire when it dies
        "--poll", "60", "--concurrency", "16",
        OUTBOX_LEASE_SECONDS="3", OUTBOX_TARGET_MAX_IN_FLIGHT="16",
    )  # fmt: skip
    assert receiver.wait_for(1, timeout=20)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    assert delivered() == 0 and Delivery.objects.exclude(locked_by="").count() == 12
    receiver.delay = 0
    workers("--poll", "1", "--concurrency", "8", OUTBOX_LEASE_SECONDS="3")
    assert wait_until(lambda: delivered() == 12, timeout=40)
    assert set(receiver.ids()) == {str(e.id) for e in events}


def test_two_workers_never_deliver_one_event_twice(tenant, receiver, workers):
    make_target(tenant, url=receiver.url)
    receiver.delay = 0.01
    workers("--poll", "1", "--batch-size", "10")
    workers("--poll", "1", "--batch-size", "10")
    assert wait_until(lambda: WorkerHeartbeat.objects.count() == 2)
    events = []
    for _ in range(10):
        events += publish(tenant, n=15)
    assert wait_until(lambda: delivered() == 150, timeout=60)
    ids = receiver.ids()
    assert len(ids) == 150 and set(ids) == {str(e.id) for e in events}


def test_worker_survives_its_database_connections_being_killed(tenant, receiver, workers):
    make_target(tenant, url=receiver.url)
    proc = workers("--poll", "1")
    publish(tenant, n=1)
    assert wait_until(lambda: delivered() == 1)
    # what a PostgreSQL restart looks like to the worker (its sessions are the owner's)
    with rls.owner_mode(connection), connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        assert cursor.fetchone()[0] >= 1
    publish(tenant, n=3)
    assert wait_until(lambda: delivered() == 4, timeout=40)
    assert proc.poll() is None  # reconnected, did not crash


def test_rate_limit_holds_across_two_workers(tenant, receiver, workers):
    """4 sends/s is the target's limit, not each worker's: two workers together stay under it."""
    make_target(tenant, "slack", kind="slack", url=receiver.url, rate_limit_per_second=4)
    # small claims and one send slot each: a worker holds at most two of the target's jobs
    # (one waiting for its rate-limit slot on the wire, one claimed ahead), so both get some
    # (with 32 slots, the worker that sends claims the next due job the moment it records)
    workers("--poll", "0.2", "--batch-size", "2", "--concurrency", "1")
    workers("--poll", "0.2", "--batch-size", "2", "--concurrency", "1")
    assert wait_until(lambda: WorkerHeartbeat.objects.count() == 2)
    publish(tenant, n=12)
    assert wait_until(lambda: delivered() == 12, timeout=40)
    assert DeliveryAttempt.objects.values("worker").distinct().count() == 2
    times = sorted(r.at for r in receiver.requests)
    assert len(times) == 12
    # any 5 consecutive sends span at least 4 intervals of 0.25 s (less scheduling jitter);
    # a per-process limiter lets two workers send 8/s: 5 sends in ~0.5 s
    tightest = min(times[i + 4] - times[i] for i in range(len(times) - 4))
    assert tightest >= 0.75, f"5 sends within {tightest:.2f} s"
    assert DeliveryAttempt.objects.count() == 12  # deferrals used no attempt


def test_real_worker_gets_everything_through_a_flaky_then_dead_then_healthy_receiver(
    tenant, receiver, workers
):
    """The worker process, not a test-driven round: 30 % random failures, then the receiver
    down for 3 s (the breaker opens, probes, closes), then healthy. Every event arrives."""
    import random

    make_target(tenant, url=receiver.url)
    flaky = random.Random(7)
    down_from, down_for = [None], 3.0

    def answer(received, index):
        if index == 20:
            down_from[0] = time.monotonic()
        if down_from[0] and time.monotonic() - down_from[0] < down_for:
            return 503, {}, "down"
        return (500, {}, "flaky") if flaky.random() < 0.3 else (200, {}, "ok")

    receiver.answer = answer
    events = publish(tenant, n=60)
    workers(
        "--poll", "0.2", "--batch-size", "10",
        OUTBOX_BACKOFF_BASE_SECONDS="1", OUTBOX_BACKOFF_MAX_SECONDS="2",
        OUTBOX_CIRCUIT_OPEN_SECONDS="1", OUTBOX_MAX_ATTEMPTS="50",
    )  # fmt: skip
    assert wait_until(lambda: delivered() == 60, timeout=90), Delivery.objects.exclude(
        status="delivered"
    ).values_list("status", "attempts", "last_error")[:5]
    assert set(receiver.ids()) == {str(e.id) for e in events}
    outage = DeliveryAttempt.objects.filter(status_code=503)
    assert outage.exists(), "the outage never happened"
    from outbox.models import CircuitTransition

    assert CircuitTransition.objects.filter(to_state="open").exists()
    assert CircuitTransition.objects.filter(from_state="half_open", to_state="closed").exists()
