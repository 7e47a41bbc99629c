"""One slow or hostile target never delays anyone else: real `manage.py outbox_worker`
processes, a tarpit (accepts, never answers) and a backlog, while another tenant publishes
steadily and measures its lag (publish commit -> its receiver)."""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
import time

import pytest
from django.db import transaction
from django.utils import timezone

from outbox.models import Delivery, Target, WorkerHeartbeat
from outbox.services import event_publish
from tests.outbox.backlog import backlog_insert
from tests.outbox.factories import make_target
from tests.outbox.helpers import free_port
from tests.outbox.tarpit import Tarpit
from tests.processes import manage_popen

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

SLOTS = 32  # the worker's OUTBOX_WORKER_CONCURRENCY (its default)
CAP = 4  # OUTBOX_TARGET_MAX_IN_FLIGHT (its default)


def _sink_main(port: int, ready) -> None:
    """A fast receiver in its own process: 200 to every POST, keep-alive."""

    async def handle(reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                if length:
                    await reader.readexactly(length)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=512)
        ready.set()
        async with server:
            await server.serve_forever()

    asyncio.run(main())


@pytest.fixture
def sink():
    port = free_port()
    context = multiprocessing.get_context("fork")
    ready = context.Event()
    proc = context.Process(target=_sink_main, args=(port, ready), daemon=True)
    proc.start()
    assert ready.wait(10)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.join(10)


@pytest.fixture
def tarpit():
    pit = Tarpit()
    yield pit
    pit.close()


@pytest.fixture
def worker():
    started = []

    def start(*args, **env):
        proc = manage_popen("outbox_worker", "--poll", "1", *args, **env)
        started.append(proc)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not WorkerHeartbeat.objects.exists():
            time.sleep(0.05)
        assert WorkerHeartbeat.objects.exists(), "the worker did not start"
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(timeout=30)
        except Exception:
            proc.kill()
            proc.wait(timeout=10)


class Sampler(threading.Thread):
    """Every 50 ms: the live leases per tenant and per target (what each holds in flight)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.by_tenant: list[dict[str, int]] = []
        self.by_target: list[dict[str, int]] = []

    def run(self):
        from django.db import connection

        try:
            while not self.stop.is_set():
                with connection.cursor() as cursor:
                    cursor.execute(
                        "SELECT tenant_id::text, target_id::text, count(*) FROM outbox_delivery"
                        " WHERE locked_until > now() AND status IN ('pending', 'retrying')"
                        " GROUP BY 1, 2"
                    )
                    rows = cursor.fetchall()
                tenants: dict[str, int] = {}
                for tenant_id, _target, n in rows:
                    tenants[tenant_id] = tenants.get(tenant_id, 0) + n
                self.by_tenant.append(tenants)
                self.by_target.append({target: n for _tenant, target, n in rows})
                self.stop.wait(0.05)
        finally:
            connection.close()

    def max_tenant(self, tenant) -> int:
        return max((s.get(str(tenant.pk), 0) for s in self.by_tenant), default=0)

    def max_target(self) -> int:
        return max((max(s.values(), default=0) for s in self.by_target), default=0)


def publish_steadily(tenant, *, rate: float, seconds: float) -> dict[str, float]:
    """Publish `rate` events/s for `seconds`; returns event id -> commit time (time.time())."""
    committed: dict[str, float] = {}
    started = time.monotonic()
    for i in range(int(rate * seconds)):
        pause = started + i / rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        with transaction.atomic():
            event = event_publish(
                tenant=tenant, event_type="order.paid", topic="orders", payload={"n": i}
            )
        committed[str(event.id)] = time.time()
    return committed


def lags(receiver, committed: dict[str, float], timeout: float = 15.0) -> list[float]:
    assert receiver.wait_for(len(committed), timeout=timeout), (
        f"{len(receiver.requests)} of {len(committed)} arrived"
    )
    arrived = {r.headers["webhook-id"]: r.at for r in receiver.requests}
    return sorted(arrived[event_id] - at for event_id, at in committed.items())


def p99(values: list[float]) -> float:
    """The 99th percentile, printed with the median (pytest -s shows the figures)."""
    value = values[min(len(values) - 1, round(0.99 * (len(values) - 1)))]
    print(f"lag p50 {values[len(values) // 2] * 1000:.0f} ms, p99 {value * 1000:.0f} ms")
    return value


def wait_until(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_a_tarpit_tenant_never_delays_another_tenants_events(
    tenant, other_tenant, receiver, tarpit, worker
):
    """Tenant B: 5 targets on a tarpit (10 s timeout) and 200 due events (1,000 deliveries).
    Tenant A publishes 5 events/s meanwhile: its lag stays far under a second. The old
    worker waited for its whole batch: A's events waited for B's timeouts (~10 s)."""
    make_target(tenant, url=receiver.url)
    pits = [
        make_target(other_tenant, f"pit{i}", url=f"http://127.0.0.1:{tarpit.port}/{i}")
        for i in range(5)
    ]
    assert {t.timeout_seconds for t in pits} == {10.0}
    backlog_insert(tenant=other_tenant, targets=pits, n=200)
    sampler = Sampler()
    sampler.start()
    worker()
    try:
        committed = publish_steadily(tenant, rate=5, seconds=12)
        measured = lags(receiver, committed)
    finally:
        sampler.stop.set()
        sampler.join()
    assert p99(measured) < 1.0, f"A's lag p99 {p99(measured):.2f} s (max {measured[-1]:.2f} s)"
    # the tarpit really held B's sends: at most what the targets' caps allow (5 x 4 of the
    # 32 slots), each target at most its cap of live leases
    assert CAP <= tarpit.max_open <= 5 * CAP
    assert sampler.max_target() <= CAP
    assert sampler.max_tenant(other_tenant) <= 5 * CAP
    assert wait_until(lambda: not Delivery.objects.filter(tenant=tenant, status="pending"))


def test_a_tenant_active_first_keeps_a_tarpit_tenant_at_half_the_slots(
    tenant, other_tenant, receiver, tarpit, worker
):
    """A publishes; then B's 10 tarpit targets (room for 40 sends) get 400 due events. While
    A keeps publishing, B's hanging sends hold at most half of the worker's 32 slots (its
    leases: at most half of what the worker holds, slots and jobs claimed ahead), each target
    at most its cap, and A's lag stays under a second."""
    make_target(tenant, url=receiver.url)
    pits = [
        make_target(other_tenant, f"pit{i}", url=f"http://127.0.0.1:{tarpit.port}/{i}")
        for i in range(10)
    ]
    worker()
    warm = publish_steadily(tenant, rate=5, seconds=1)
    backlog_insert(tenant=other_tenant, targets=pits, n=400, spread=True)
    sampler = Sampler()
    sampler.start()
    try:
        committed = publish_steadily(tenant, rate=5, seconds=10)
        measured = lags(receiver, {**warm, **committed})
    finally:
        sampler.stop.set()
        sampler.join()
    assert p99(measured) < 1.0, f"A's lag p99 {p99(measured):.2f} s (max {measured[-1]:.2f} s)"
    assert SLOTS // 4 < tarpit.max_open <= SLOTS // 2  # B had 40 to send: held to its half
    assert sampler.max_tenant(other_tenant) <= (SLOTS + SLOTS) // 2
    assert sampler.max_target() <= CAP


def test_a_backlog_drains_while_another_tenant_keeps_a_short_lag(
    tenant, other_tenant, receiver, sink, worker
):
    """B: 20,000 due events over 8 targets of a fast receiver. A publishes 10 events/s: its
    lag p99 stays under a second while B drains (B keeps going; it is not starved either).
    The old FIFO claim served A only after B's whole backlog ahead of it."""
    make_target(tenant, url=receiver.url)
    fast = [make_target(other_tenant, f"bulk{i}", url=f"{sink}/{i}") for i in range(8)]
    backlog_insert(tenant=other_tenant, targets=fast, n=20_000, spread=True)
    sampler = Sampler()
    sampler.start()
    worker()
    started = timezone.now()
    try:
        committed = publish_steadily(tenant, rate=10, seconds=10)
        measured = lags(receiver, committed)
    finally:
        sampler.stop.set()
        sampler.join()
    elapsed = (timezone.now() - started).total_seconds()
    drained = Delivery.objects.filter(tenant=other_tenant, status="delivered").count()
    assert p99(measured) < 1.0, f"A's lag p99 {p99(measured):.2f} s (max {measured[-1]:.2f} s)"
    assert drained >= 1000, f"B drained only {drained} in {elapsed:.0f} s"
    assert sampler.max_tenant(other_tenant) <= SLOTS - SLOTS // 8 + SLOTS  # alone at first
    assert sampler.max_target() <= CAP
    assert not Target.objects.exclude(circuit_state="closed").exists()
