"""The delivery pipeline's part of bench/outbox.py: one worker's cost against a same-run HTTP
ceiling (throughput, CPU per delivery per process from /proc), two workers against one, and
fairness under attack (a tarpit tenant; a large backlog) measured as another tenant's lag.

Workers are real `manage.py outbox_worker` processes on the bench database; backlogs are one
INSERT … SELECT generate_series (tests/outbox/backlog.py).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time

from _common import ROOT, database_url, summarize_latencies

TICK = os.sysconf("SC_CLK_TCK")


# --- processes and their CPU -------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (every thread), from /proc/<pid>/stat."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def machine_busy_seconds() -> float:
    """CPU seconds every core spent busy (not idle, not waiting for I/O), from /proc/stat."""
    with open("/proc/stat") as stat:
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(
            int, stat.readline().split()[1:9]
        )
    return (user + nice + system + irq + softirq + steal) / TICK


def pg_backends(every: bool = False) -> list[int]:
    """PostgreSQL client backends on this database, except this process's own; `every`: with
    this process's own and the server's WAL writer."""
    from django.db import connection

    from tenants import rls

    with rls.owner_mode(connection), connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity WHERE (datname = current_database()"
            " AND backend_type = 'client backend' AND (%s OR pid <> pg_backend_pid()))"
            " OR (%s AND backend_type = 'walwriter')",
            [every, every],
        )
        return [pid for (pid,) in cursor.fetchall()]


class CpuMeter:
    """CPU seconds spent by some processes between start() and stop()."""

    def __init__(self, pids: list[int]):
        self.pids = pids
        self.before = {pid: cpu_seconds(pid) for pid in pids}
        self.seconds = 0.0

    def stop(self) -> float:
        self.seconds = sum(cpu_seconds(pid) - self.before[pid] for pid in self.pids)
        return self.seconds


def worker_env(**extra) -> dict[str, str]:
    env = dict(os.environ, DATABASE_URL=database_url(), DJANGO_SETTINGS_MODULE="config.settings")
    env.update(OUTBOX_ALLOWED_TARGET_NETWORKS="127.0.0.0/8", LOG_LEVEL="WARNING")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def workers_start(count: int, **env) -> list[subprocess.Popen]:
    """`count` outbox_worker processes, returned once each has a heartbeat."""
    from outbox.models import WorkerHeartbeat

    before = WorkerHeartbeat.objects.filter(stopped_at__isnull=True).count()
    procs = [
        subprocess.Popen(
            [sys.executable, str(ROOT / "manage.py"), "outbox_worker", "--poll", "0.5"],
            cwd=ROOT,
            env=worker_env(**env),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(count)
    ]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if WorkerHeartbeat.objects.filter(stopped_at__isnull=True).count() >= before + count:
            break
        time.sleep(0.1)
    time.sleep(0.5)  # listening
    return procs


def workers_stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def analyze_deliveries() -> None:
    """Fresh planner statistics for the delivery table (only the owner may ANALYZE). A backlog
    written in one statement and drained the next millisecond would otherwise be claimed with
    the statistics of the empty table (autovacuum analyzes within about a minute)."""
    from django.db import connection

    from tenants import rls

    with rls.owner_mode(connection), connection.cursor() as cursor:
        cursor.execute("ANALYZE outbox_delivery")


def queue_reset() -> None:
    """Empty the delivery queue and refresh its statistics (the owner's work) between
    sections: the next section must not claim through thousands of rows the last one just
    delivered, planned with statistics of a queue that no longer exists."""
    from django.db import connection

    from tenants import rls

    with rls.owner_mode(connection), connection.cursor() as cursor:
        cursor.execute("TRUNCATE outbox_deliveryattempt, outbox_delivery")
        cursor.execute("VACUUM ANALYZE outbox_delivery")
        cursor.execute("VACUUM ANALYZE outbox_outboxevent")


def notify() -> None:
    from django.db import connection

    from outbox import conf

    with connection.cursor() as cursor:
        cursor.execute(f"NOTIFY {conf.CHANNEL_EVENTS}")


# --- scenarios ---------------------------------------------------------------------------------


def _tenant_with_targets(name: str, urls: list[str]):
    from django.db import transaction

    from outbox.services import target_create
    from tenants.services import tenant_create

    with transaction.atomic():
        tenant = tenant_create(name=name)
        targets = [
            target_create(tenant=tenant, name=f"t{i}", kind="webhook", url=url)
            for i, url in enumerate(urls)
        ]
    return tenant, targets


def _wait_received(receiver_stats, base: str, path: str, count: int, seconds: float) -> dict:
    deadline = time.monotonic() + seconds
    stats = receiver_stats(base, path, reset=False, brief=True)
    while stats["count"] < count and time.monotonic() < deadline:
        time.sleep(0.05)
        stats = receiver_stats(base, path, reset=False, brief=True)
    return receiver_stats(base, path, reset=False)


def _ceiling_urllib3(jobs, base: str, concurrency: int) -> list[int]:
    """The client the worker had before (urllib3 pools on 32 threads), as a reference."""
    from concurrent.futures import ThreadPoolExecutor

    import urllib3

    from outbox.delivery.send import webhook_request

    port = int(base.rsplit(":", 1)[1])
    pools = {}

    def post(job):
        pool = pools.get(job.url)
        if pool is None:
            pool = pools.setdefault(
                job.url, urllib3.HTTPConnectionPool("127.0.0.1", port, maxsize=concurrency)
            )
        headers, body = webhook_request(job)
        path = job.url[len(base) :]
        return pool.urlopen("POST", path, body=body.encode(), headers=headers).status

    with ThreadPoolExecutor(concurrency) as threads:
        return list(threads.map(post, jobs))


def _ceiling_worker_client(jobs, concurrency: int) -> list[int]:
    """The worker's own client (delivery/client.py) on one event loop, `concurrency` sends in
    flight, the same signed bodies, no database."""
    import asyncio

    from outbox.delivery.client import Client, destination
    from outbox.delivery.send import webhook_request

    async def run() -> list[int]:
        client = Client(pool_size=concurrency)
        queue = list(reversed(jobs))
        codes: list[int] = []

        async def slot():
            while queue:
                job = queue.pop()
                headers, body = webhook_request(job)
                to = destination(job.url)
                response = await client.post((job.target_id, job.url), to, headers,
                                             body.encode(), 10.0)  # fmt: skip
                codes.append(response.status)

        await asyncio.gather(*(slot() for _ in range(concurrency)))
        client.close()
        return codes

    return asyncio.run(run())


def bench_worker_cost(
    receiver_stats, base: str, n: int, n_targets: int = 16
) -> tuple[list[dict], dict]:
    """Two ceilings (no database: the same signed bodies posted by urllib3 on 32 threads, the
    client the worker had, and by the worker's own client with 32 sends in flight), then one
    worker and two workers draining n (2n) due deliveries to the same receiver, first on the
    whole machine, then confined to one core and to two (`_drain_with_workers`); CPU per
    delivery per process, and the cores the machine kept busy.

    Two tenants with `n_targets` targets each on the receiver, the deliveries spread over all
    of them. The per-target cap (4 by default) counts every live lease in the fleet, claimed
    ahead or on the wire: a worker holds up to 64 (32 slots, 32 claimed ahead), so two need
    128 open leases between them or the cap, not the workers, sets the pace (with one tenant
    of 8 targets, 32 leases in all: a second worker could add nothing)."""
    from datetime import UTC, datetime

    from outbox import conf
    from outbox.delivery.send import Job

    concurrency = conf.get("OUTBOX_WORKER_CONCURRENCY")
    tenants = []
    for t in range(2):
        urls = [f"{base}/cost/{t}-{i}" for i in range(n_targets)]
        tenants.append(_tenant_with_targets(f"bench-cost-{t}", urls))
    every = [(tenant, target) for tenant, targets in tenants for target in targets]
    now = datetime.now(UTC)
    jobs = [
        Job(0, str(tenant.id), f"evt_{i}", i, "bulk", "bulk.event", {}, f"k{i}", now, 0,
            str(target.id), "webhook", target.url, [target.secret],
            payload_json=f'{{"n": {i}}}')
        for i, (tenant, target) in ((i, every[i % len(every)]) for i in range(n))
    ]  # fmt: skip

    rows = []
    ceilings = {}
    for name, run in (
        (f"ceiling: urllib3, {concurrency} threads (the worker's former client)",
         lambda: _ceiling_urllib3(jobs, base, concurrency)),
        (f"ceiling: the worker's client, {concurrency} in flight",
         lambda: _ceiling_worker_client(jobs, concurrency)),
    ):  # fmt: skip
        receiver_cpu = receiver_stats(base, "cost", reset=True)["cpu"]
        meter = CpuMeter([os.getpid()])
        machine = machine_busy_seconds()
        started = time.perf_counter()
        codes = run()
        seconds = time.perf_counter() - started
        client_cpu = meter.stop()
        machine = machine_busy_seconds() - machine
        receiver_cpu = receiver_stats(base, "cost", reset=False)["cpu"] - receiver_cpu
        assert codes.count(200) == n, codes[:5]
        ceilings[name] = n / seconds
        rows.append(
            {
                "mode": name,
                "deliveries": n,
                "seconds": round(seconds, 2),
                "per_second": round(n / seconds, 1),
                "share_of_urllib3_ceiling": round(n / seconds / next(iter(ceilings.values())), 2),
                "worker_cpu_ms_per_delivery": round(client_cpu / n * 1000, 3),
                "postgres_cpu_ms_per_delivery": 0.0,
                "receiver_cpu_ms_per_delivery": round(receiver_cpu / n * 1000, 3),
                "cores_busy": round(machine / seconds, 2),
            }
        )
    urllib3_ceiling, client_ceiling = ceilings.values()
    for count, cores in ((1, None), (2, None), (1, {0}), (2, {0, 1})):
        rate, row = _drain_with_workers(receiver_stats, base, tenants, n * count, count, cores)
        rows.append(
            {
                **row,
                "per_second": round(rate, 1),
                "share_of_urllib3_ceiling": round(rate / urllib3_ceiling, 2),
            }
        )
    queue_reset()
    one, two = rows[2], rows[3]
    figures = {
        "one_worker_share_of_ceiling": one["share_of_urllib3_ceiling"],
        "one_worker_share_of_own_client": round(one["per_second"] / client_ceiling, 2),
        "worker_cpu_ms_per_delivery": one["worker_cpu_ms_per_delivery"],
        # the whole machine: printed, not checked (the module docstring of bench/outbox.py)
        "two_workers_vs_one": round(two["per_second"] / one["per_second"], 2),
        # one worker confined to one core, two to two: the floor
        "two_cores_vs_one": round(rows[5]["per_second"] / rows[4]["per_second"], 2),
    }
    return rows, figures


def _drain_with_workers(receiver_stats, base, tenants, total, count, cores) -> tuple[float, dict]:
    """`count` worker processes drain `total` due deliveries; with `cores`, the system under
    test (the workers, their PostgreSQL backends, PostgreSQL's WAL writer, the receiver and
    this process) runs on those CPUs only."""
    from tests.outbox.backlog import backlog_insert

    queue_reset()  # every drain starts from the same table: not behind the last one's dead rows
    procs = workers_start(count)
    pinned: list[int] = []
    try:
        receiver = receiver_stats(base, "cost", reset=True)
        if cores is not None:
            pinned = [p.pid for p in procs] + pg_backends(every=True)
            pinned += [receiver["pid"], os.getpid()]
            cpu_pin(pinned, cores)
        worker_meter = CpuMeter([p.pid for p in procs])
        pg_meter = CpuMeter(pg_backends())
        for tenant, targets in tenants:
            backlog_insert(tenant=tenant, targets=targets, n=total // 2, spread=True,
                           prefix=f"cost{count}-{cores}-")  # fmt: skip
        analyze_deliveries()  # as autovacuum would soon: a backlog of minutes, not ms
        machine = machine_busy_seconds()
        started = time.perf_counter()
        notify()
        stats = _wait_received(receiver_stats, base, "cost", total, 600)
        seconds = time.perf_counter() - started
        worker_cpu, pg_cpu = worker_meter.stop(), pg_meter.stop()
        machine = machine_busy_seconds() - machine
    finally:
        workers_stop(procs)
        if pinned:
            cpu_pin(pinned, set(range(os.cpu_count() or 1)))
    delivered = stats["count"]
    where = f" on {len(cores)} core{'s' if len(cores) > 1 else ''}" if cores else ""
    return delivered / seconds, {
        "mode": f"{count} outbox worker process{'es' if count > 1 else ''}{where}",
        "deliveries": delivered,
        "seconds": round(seconds, 2),
        "worker_cpu_ms_per_delivery": round(worker_cpu / delivered * 1000, 3),
        "postgres_cpu_ms_per_delivery": round(pg_cpu / delivered * 1000, 3),
        "receiver_cpu_ms_per_delivery": round(
            (stats["cpu"] - receiver["cpu"]) / delivered * 1000, 3
        ),
        "cores_busy": round(machine / seconds, 2),
    }


def cpu_pin(pids: list[int], cores: set[int]) -> None:
    """Every thread of these processes onto these CPUs (a gone process is skipped)."""
    for pid in pids:
        try:
            threads = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in threads:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(int(tid), cores)


def _publish_steadily(tenant, target: str, rate: float, seconds: float) -> int:
    from django.db import transaction

    from outbox.services import event_publish

    total = int(rate * seconds)
    started = time.perf_counter()
    for i in range(total):
        pause = started + i / rate - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        with transaction.atomic():
            event_publish(tenant=tenant, event_type="order.paid", topic="orders",
                          payload={"n": i}, target=target)  # fmt: skip
    return total


def bench_tarpit(receiver_stats, base: str, events: int, seconds: float) -> dict:
    """B: 5 targets on a tarpit (timeout 10 s) and `events` due events (each to all 5).
    A publishes 10 events/s meanwhile; A's lag is what the receiver measured."""
    from tests.outbox.backlog import backlog_insert
    from tests.outbox.tarpit import Tarpit

    pit = Tarpit()
    try:
        a, _ = _tenant_with_targets("bench-tarpit-a", [f"{base}/tarpit-a"])
        b, pits = _tenant_with_targets(
            "bench-tarpit-b", [f"http://127.0.0.1:{pit.port}/{i}" for i in range(5)]
        )
        backlog_insert(tenant=b, targets=pits, n=events)
        procs = workers_start(1)
        try:
            receiver_stats(base, "tarpit-a", reset=True)
            notify()
            sent = _publish_steadily(a, "t0", 10, seconds)
            stats = _wait_received(receiver_stats, base, "tarpit-a", sent, 30)
        finally:
            workers_stop(procs)
    finally:
        pit.close()
    return {
        "scenario": f"B: 5 tarpit targets, {events} due events; A: 10/s for {seconds:g} s",
        "a_received": f"{stats['count']}/{sent}",
        **{f"a_lag_{k}": v for k, v in summarize_latencies(stats["lags"]).items()},
        "b_sends_hanging_max": pit.max_open,
        "b_connections": pit.accepted,
    }


def bench_backlog(receiver_stats, base: str, backlog: int, seconds: float) -> dict:
    """B: `backlog` due events over 8 targets of the fast receiver; A publishes 10 events/s
    for `seconds` while B drains; B's drain rate over the same window."""
    from outbox.models import Delivery
    from tests.outbox.backlog import backlog_insert

    a, _ = _tenant_with_targets("bench-backlog-a", [f"{base}/backlog-a"])
    b, bulk = _tenant_with_targets("bench-backlog-b", [f"{base}/backlog-b/{i}" for i in range(8)])
    inserted = time.perf_counter()
    backlog_insert(tenant=b, targets=bulk, n=backlog, spread=True)
    insert_s = time.perf_counter() - inserted

    analyze_deliveries()
    procs = workers_start(1)
    try:
        receiver_stats(base, "backlog-a", reset=True)
        receiver_stats(base, "backlog-b", reset=True)
        notify()
        started = time.perf_counter()
        sent = _publish_steadily(a, "t0", 10, seconds)
        window = time.perf_counter() - started
        drained = receiver_stats(base, "backlog-b", reset=False)["count"]
        stats = _wait_received(receiver_stats, base, "backlog-a", sent, 30)
    finally:
        workers_stop(procs)
    left = Delivery.objects.filter(tenant=b, status__in=["pending", "retrying"]).count()
    return {
        "scenario": f"B: {backlog:,} due events (8 targets); A: 10/s for {seconds:g} s",
        "a_received": f"{stats['count']}/{sent}",
        **{f"a_lag_{k}": v for k, v in summarize_latencies(stats["lags"]).items()},
        "b_drained_per_s": round(drained / window, 1),
        "b_left": left,
        "backlog_insert_s": round(insert_s, 1),
    }
