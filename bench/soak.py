"""Fault-injection soak of the outbox: nothing published may be lost, whatever breaks.

Runs real processes against its OWN embedded PostgreSQL in a temporary folder (so it may
restart it): gunicorn (2 workers), two `outbox_worker`s, `qcluster`, and a receiver on
127.0.0.1 that fails at random (500s, responses slower than the target's timeout, connection
resets). It publishes N events through `POST /api/outbox/events` at a steady rate while a fault
schedule SIGKILLs workers (each restarted a second later), restarts PostgreSQL and stops the
receiver for a while; then it waits (bounded) for the queue to drain and compares what the API
acknowledged with what the receiver accepted.

Printed and written to bench/results/soak.json (or --report NAME): published, delivered, lost
(must be 0: the run exits 1 otherwise), duplicates seen by the receiver and their causes,
p50/p99 end-to-end lag (event committed -> first accepted receipt), recovery time per fault.

Duplicates are attributed by evidence, in this order: right after each SIGKILL the soak reads
which deliveries the dead worker still held leased (`locked_by` starts with its
host:pid); a duplicate of one of those is a killed worker's expired lease. Otherwise, a
duplicate with a receipt the receiver answered after the target's timeout is a receiver
timeout; one with a receipt during a PostgreSQL restart (the verdict could not be recorded) or
at the moment the receiver was stopped is put on that fault; anything else is "other".

Usage:
  .venv/bin/python bench/soak.py                 # 20,000 events, default schedule
  .venv/bin/python bench/soak.py --quick         # ~500 events, 1 kill, 1 restart, 4 s outage
  .venv/bin/python bench/soak.py --events 5000 --rate 80 \\
      --faults "kill@0.2,pg@0.4:5,receiver@0.6:60,kill@0.7,kill@0.9"

Fault schedule: comma list of kind@fraction[:seconds], fraction of the publishing phase;
kinds: kill (SIGKILL a worker, restart after --restart-delay), pg (PostgreSQL down for
`seconds`, default 3), receiver (receiver down for `seconds`, default 60).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import signal
import socket
import struct
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from _common import (
    ROOT,
    EmbeddedPostgres,
    atlas_env,
    free_port,
    gunicorn_command,
    manage_command,
    print_table,
    spawn,
    stop_process,
    summarize_latencies,
    tail,
    wait_http,
    write_report,
)

DEFAULT_FAULTS = "kill@0.15,pg@0.3:5,kill@0.45,receiver@0.5:60,kill@0.9"
QUICK_FAULTS = "kill@0.2,pg@0.55:2,receiver@0.75:4"
ACCEPTED = ("ok", "slow")  # the receiver processed the webhook (a slow one too, just late)


# --- the receiver (a child process: `soak.py _receiver …`) ----------------------------------


def receiver_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="soak.py _receiver")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--p500", type=float, default=0.08)
    parser.add_argument("--pslow", type=float, default=0.02)
    parser.add_argument("--preset", type=float, default=0.03)
    parser.add_argument("--slow-seconds", type=float, default=2.5)
    parser.add_argument("--max-seconds", type=float, default=3600)
    args = parser.parse_args(argv)

    log = open(args.log, "a", buffering=1)  # noqa: SIM115 - one line per request, until exit
    lock = threading.Lock()

    def record(outcome: str, webhook_id: str) -> None:
        with lock:
            log.write(f"{time.time():.6f} {outcome} {webhook_id}\n")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            webhook_id = self.headers.get("webhook-id") or "-"
            if not body or webhook_id == "-":
                self._answer(400, b"no webhook-id")
                return
            roll = random.random()
            if roll < args.preset:
                record("reset", webhook_id)
                # RST instead of FIN: SO_LINGER 0 then close, before any response
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
                self.connection.close()
                self.close_connection = True
                return
            roll -= args.preset
            if roll < args.p500:
                record("500", webhook_id)
                self._answer(500, b"injected failure")
                return
            roll -= args.p500
            if roll < args.pslow:
                time.sleep(args.slow_seconds)  # past the target's timeout: the sender gave up
                record("slow", webhook_id)
                self._answer(200, b"ok (late)")
                return
            record("ok", webhook_id)
            self._answer(200, b"ok")

        def _answer(self, status: int, body: bytes) -> None:
            try:
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except OSError:
                self.close_connection = True

        def log_message(self, *args):  # quiet
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        allow_reuse_address = True
        request_queue_size = 256

    server = Server(("127.0.0.1", args.port), Handler)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    threading.Timer(args.max_seconds, server.shutdown).start()  # never outlives the soak
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        log.flush()
        os._exit(0)


class ReceiverLog:
    """Reads the receiver's log incrementally: accepted receipts per webhook-id."""

    def __init__(self, path: Path):
        self.path, self.offset = path, 0
        self.receipts: dict[str, list[tuple[float, str]]] = defaultdict(list)
        self.outcomes: Counter = Counter()

    def refresh(self) -> None:
        if not self.path.exists():
            return
        with open(self.path) as handle:
            handle.seek(self.offset)
            data = handle.read()
        complete = data[: data.rfind("\n") + 1]
        self.offset += len(complete.encode())
        for line in complete.splitlines():
            at, outcome, webhook_id = line.split(" ", 2)
            self.outcomes[outcome] += 1
            self.receipts[webhook_id].append((float(at), outcome))

    def accepted(self, webhook_id: str) -> list[tuple[float, str]]:
        return [r for r in self.receipts.get(webhook_id, ()) if r[1] in ACCEPTED]

    def first_accepted(self, webhook_id: str, after: float = 0.0) -> float | None:
        times = [at for at, _ in self.accepted(webhook_id) if at >= after]
        return min(times) if times else None


# --- the publisher --------------------------------------------------------------------------


class Publisher:
    """Publishes events on a fixed schedule from a few threads; retries each event with the
    same idempotency key until the API acknowledges it (bounded per event)."""

    def __init__(self, port: int, key: str, run_id: str, target: str, *, retry_seconds: float):
        self.port, self.key, self.run_id, self.target = port, key, run_id, target
        self.retry_seconds = retry_seconds
        self.acked: dict[int, tuple[str, float]] = {}  # index -> (event id, acked at)
        self.failed: list[int] = []
        self.errors: Counter = Counter()
        self.ok_times: list[float] = []
        self.lock = threading.Lock()
        self.local = threading.local()

    def run(self, count: int, rate: float, threads: int) -> float:
        started = time.time()
        counter = iter(range(count))
        counter_lock = threading.Lock()

        def loop():
            while True:
                with counter_lock:
                    index = next(counter, None)
                if index is None:
                    return
                delay = started + index / rate - time.time()
                if delay > 0:
                    time.sleep(delay)
                self.publish(index)

        pool = [threading.Thread(target=loop, daemon=True) for _ in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
        return time.time() - started

    def publish(self, index: int) -> None:
        body = json.dumps(
            {
                "eventType": "soak.tick",
                "topic": "soak",
                "payload": {"n": index, "run": self.run_id},
                "target": self.target,
                "idempotencyKey": f"soak-{self.run_id}-{index}",
            }
        )
        deadline = time.monotonic() + self.retry_seconds
        pause = 0.2
        while True:
            try:
                status, content = self._post("/api/outbox/events", body)
                if status in (200, 201):
                    event_id = json.loads(content)["id"]
                    now = time.time()
                    with self.lock:
                        self.acked[index] = (event_id, now)
                        self.ok_times.append(now)
                    return
                with self.lock:
                    self.errors[f"http {status}"] += 1
                if status < 500 and status != 429:
                    raise RuntimeError(f"publish refused: {status} {content[:300]!r}")
            except (OSError, http.client.HTTPException) as exc:
                with self.lock:
                    self.errors[type(exc).__name__] += 1
                self._reset()
            if time.monotonic() > deadline:
                with self.lock:
                    self.failed.append(index)
                return
            time.sleep(pause)
            pause = min(pause * 2, 2.0)

    def _post(self, path: str, body: str) -> tuple[int, bytes]:
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = self.local.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
        headers = {"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"}
        conn.request("POST", path, body, headers)
        response = conn.getresponse()
        return response.status, response.read()

    def _reset(self) -> None:
        conn = getattr(self.local, "conn", None)
        if conn is not None:
            conn.close()
        self.local.conn = None


# --- the soak -------------------------------------------------------------------------------


def parse_faults(spec: str, default_pg: float, default_receiver: float) -> list[dict]:
    faults = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        kind, _, rest = item.partition("@")
        at, _, seconds = rest.partition(":")
        if kind not in ("kill", "pg", "receiver"):
            raise SystemExit(f"unknown fault kind {kind!r} in --faults")
        default = {"pg": default_pg, "receiver": default_receiver}.get(kind, 0.0)
        faults.append(
            {"kind": kind, "at_fraction": float(at), "seconds": float(seconds or default)}
        )
    return sorted(faults, key=lambda f: f["at_fraction"])


class Soak:
    def __init__(self, args):
        self.args = args
        self.folder = Path(tempfile.mkdtemp(prefix="atlas-soak-"))
        self.logs = self.folder / "logs"
        self.pg = EmbeddedPostgres(self.folder)
        self.processes: dict[str, object] = {}
        self.restarts: Counter = Counter()
        self.faults: list[dict] = []
        self.db_lock = threading.Lock()  # a kill's snapshot never overlaps a restart
        self.receiver_port = free_port()
        self.web_port = free_port()
        self.receiver_log = self.folder / "receiver.log"
        self.t0 = time.time()

    # processes

    def env(self) -> dict:
        a = self.args
        return atlas_env(
            self.database_url,
            self.folder,
            OUTBOX_BACKOFF_BASE_SECONDS=a.backoff_base,
            OUTBOX_BACKOFF_MAX_SECONDS=a.backoff_max,
            OUTBOX_LEASE_SECONDS=a.lease,
            OUTBOX_MAX_ATTEMPTS=a.max_attempts,
            OUTBOX_CIRCUIT_OPEN_SECONDS=a.circuit_open,
            OUTBOX_POLL_SECONDS=1,
            Q_CLUSTER_NAME=f"atlas-soak-{self.run_id}",
            Q_WORKERS=1,
            DB_CONNECT_TIMEOUT=3,
        )

    def start_worker(self, name: str):
        self.processes[name] = spawn(name, manage_command("outbox_worker"), self.env(), self.logs)

    def start_receiver(self):
        a = self.args
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "_receiver",
            f"--port={self.receiver_port}",
            f"--log={self.receiver_log}",
            f"--p500={a.p500}",
            f"--pslow={a.pslow}",
            f"--preset={a.preset}",
            f"--slow-seconds={a.target_timeout + 1.0}",
            f"--max-seconds={a.max_minutes * 60}",
        ]
        self.processes["receiver"] = spawn("receiver", command, dict(os.environ), self.logs)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.receiver_port)) == 0:
                    return
            time.sleep(0.1)
        raise SystemExit("the receiver did not start")

    def setup(self):
        a = self.args
        self.run_id = uuid.uuid4().hex[:8]
        print(f"soak folder {self.folder}", flush=True)
        print("starting an own embedded PostgreSQL …", flush=True)
        self.pg.start()
        self.database_url = self.pg.create_database("atlas_soak")
        env = self.env()
        os.environ.update({k: env[k] for k in ("DATABASE_URL", "ATLAS_VAR_DIR", "CACHE_DIR")})
        os.environ.update(SECRET_KEY=env["SECRET_KEY"], DJANGO_SETTINGS_MODULE="config.settings")
        os.environ["ATLAS_BENCH_SECRET_KEY"] = env["SECRET_KEY"]
        print("migrating …", flush=True)
        started = time.monotonic()
        migrate = spawn("migrate", manage_command("migrate", "--noinput"), env, self.logs)
        if migrate.wait(timeout=600) != 0:
            raise SystemExit("migrate failed:\n" + tail(self.logs / "migrate.log"))
        print(f"  migrated in {time.monotonic() - started:.1f} s", flush=True)

        sys.path.insert(0, str(ROOT))
        import django

        django.setup()
        from tenants import rls

        # set-up and checks see every tenant's rows (row-level security: docs/tenancy.md)
        rls.enter_system_scope("soak set-up and checks")
        from django.db import connection

        from outbox.services import target_create
        from tenants.services import apikey_create, tenant_create

        tenant = tenant_create(name="soak")
        _key, self.raw_key = apikey_create(tenant=tenant, kind="secret")
        target_create(
            tenant=tenant,
            name="receiver",
            kind="webhook",
            url=f"http://127.0.0.1:{self.receiver_port}/hook",
            timeout_seconds=a.target_timeout,
        )
        self.tenant_id = tenant.id
        connection.close()

        print(
            f"starting receiver :{self.receiver_port}, gunicorn (2 workers) :{self.web_port}, "
            "2 outbox workers, qcluster …",
            flush=True,
        )
        self.start_receiver()
        self.processes["web"] = spawn("web", gunicorn_command(self.web_port), env, self.logs)
        self.start_worker("worker-1")
        self.start_worker("worker-2")
        self.processes["qcluster"] = spawn("qcluster", manage_command("qcluster"), env, self.logs)
        wait_http(f"http://127.0.0.1:{self.web_port}/health", 90, self.processes["web"])

    # faults

    def now(self) -> float:
        return time.time()

    def fault_kill(self, fault: dict):
        from django.db import connection

        with self.db_lock:
            kills = sum(1 for f in self.faults if f["kind"] == "kill")
            name = f"worker-{kills % 2 + 1}"
            process = self.processes[name]
            pid = process.pid
            prefix = f"{socket.gethostname()}:{pid}:"
            # kill it mid-batch: wait (bounded) until it holds a lease, so the kill strands work
            waited = self._wait_for_lease(prefix, self.args.kill_wait)
            os.kill(pid, signal.SIGKILL)
            process.wait(timeout=10)
            at = self.now()
            leased: list[str] = []
            for _ in range(20):
                try:
                    with connection.cursor() as cursor:
                        cursor.execute(
                            "SELECT event_id::text FROM outbox_delivery "
                            "WHERE locked_by LIKE %s AND locked_until > now()",
                            [prefix + "%"],
                        )
                        leased = [row[0] for row in cursor.fetchall()]
                    break
                except Exception:
                    connection.close()
                    time.sleep(0.25)
            connection.close()
            record = {
                "kind": "kill",
                "process": name,
                "pid": pid,
                "at": at,
                "leased_at_kill": leased,
                "waited_for_lease_s": round(waited, 2),
            }
            self.faults.append(record)
            print(
                f"  [{at - self.t0:6.1f}s] SIGKILL {name} (pid {pid}): "
                f"{len(leased)} deliveries still leased (waited {waited:.1f} s for a lease)",
                flush=True,
            )
            time.sleep(self.args.restart_delay)
            self.start_worker(name)
            self.restarts[name] += 1
            record["restarted_at"] = self.now()

    @staticmethod
    def _wait_for_lease(prefix: str, seconds: float) -> float:
        """Until one claim of this worker has been in flight for 100 ms (bounded)."""
        from django.db import connection

        started = time.monotonic()
        seen: dict[str, float] = {}
        while time.monotonic() - started < seconds:
            try:
                with connection.cursor() as cursor:
                    cursor.execute(
                        "SELECT DISTINCT locked_by FROM outbox_delivery WHERE locked_by LIKE %s "
                        "AND locked_until > now()",
                        [prefix + "%"],
                    )
                    tokens = {row[0] for row in cursor.fetchall()}
            except Exception as exc:
                print(f"  (lease poll: {exc!r})", flush=True)
                connection.close()
                tokens = set()
            now = time.monotonic()
            seen = {token: seen.get(token, now) for token in tokens}
            if any(now - first >= 0.1 for first in seen.values()):
                break
            time.sleep(0.02)
        return time.monotonic() - started

    def fault_pg(self, fault: dict):
        from django.db import connection

        with self.db_lock:
            connection.close()
            at = self.now()
            print(f"  [{at - self.t0:6.1f}s] PostgreSQL stop (fast) …", flush=True)
            self.pg.stop("fast")
            stopped = self.now()
            time.sleep(fault["seconds"])
            self.pg.start()
            up = self.now()
            print(
                f"  [{up - self.t0:6.1f}s] PostgreSQL up again (down {up - stopped:.1f} s)",
                flush=True,
            )
            self.faults.append({"kind": "pg", "at": at, "stopped_at": stopped, "up_at": up})

    def fault_receiver(self, fault: dict):
        at = self.now()
        stop_process(self.processes["receiver"], 10)
        print(f"  [{at - self.t0:6.1f}s] receiver stopped for {fault['seconds']:g} s", flush=True)
        record = {"kind": "receiver", "at": at, "seconds": fault["seconds"]}
        self.faults.append(record)
        time.sleep(fault["seconds"])
        self.start_receiver()
        record["up_at"] = self.now()
        print(f"  [{record['up_at'] - self.t0:6.1f}s] receiver back", flush=True)

    def run_faults(self, schedule: list[dict], phase_seconds: float, started: float):
        threads = []
        for fault in schedule:
            delay = started + fault["at_fraction"] * phase_seconds - time.time()
            if delay > 0:
                time.sleep(delay)
            handler = getattr(self, f"fault_{fault['kind']}")
            thread = threading.Thread(target=self._guard, args=(handler, fault), daemon=True)
            thread.start()
            threads.append(thread)
        for thread in threads:
            thread.join()

    def _guard(self, handler, fault):
        try:
            handler(fault)
        except Exception as exc:
            print(f"  fault {fault['kind']} failed: {exc!r}", flush=True)
            self.faults.append({"kind": fault["kind"], "error": repr(exc), "at": self.now()})

    # the run

    def run(self) -> int:
        a = self.args
        self.setup()
        publisher = Publisher(
            self.web_port, self.raw_key, self.run_id, "receiver", retry_seconds=a.publish_retry
        )
        schedule = parse_faults(a.faults, a.pg_down, a.receiver_down)
        phase = a.events / a.rate
        print(
            f"publishing {a.events:,} events at {a.rate:g}/s (~{phase:.0f} s) with faults: "
            + ", ".join(f"{f['kind']}@{f['at_fraction']:g}" for f in schedule),
            flush=True,
        )
        print(
            f"  worker settings for this soak: OUTBOX_BACKOFF_BASE_SECONDS={a.backoff_base} "
            f"OUTBOX_BACKOFF_MAX_SECONDS={a.backoff_max} OUTBOX_LEASE_SECONDS={a.lease} "
            f"OUTBOX_MAX_ATTEMPTS={a.max_attempts} OUTBOX_CIRCUIT_OPEN_SECONDS={a.circuit_open}; "
            f"target timeout {a.target_timeout:g} s; receiver fails "
            f"{a.p500:.0%} with 500, {a.preset:.0%} with a reset, answers {a.pslow:.0%} late",
            flush=True,
        )
        started = time.time()
        faults = threading.Thread(
            target=self.run_faults, args=(schedule, phase, started), daemon=True
        )
        faults.start()
        publish_seconds = publisher.run(a.events, a.rate, a.publishers)
        print(
            f"  published {len(publisher.acked):,} in {publish_seconds:.1f} s "
            f"({len(publisher.failed)} not acknowledged); waiting for the faults to finish …",
            flush=True,
        )
        faults.join(timeout=max(60.0, sum(f["seconds"] for f in schedule) + 60))
        return self.drain_and_report(publisher, publish_seconds)

    def drain_and_report(self, publisher: Publisher, publish_seconds: float) -> int:
        from django.db import connection

        from outbox.models import Delivery, OutboxEvent
        from outbox.routing import OPERATOR_TOPIC

        a = self.args
        log = ReceiverLog(self.receiver_log)
        acked_ids = {event_id for event_id, _ in publisher.acked.values()}
        deadline = time.monotonic() + a.drain_timeout
        drain_started = time.time()
        open_rows = -1
        while True:
            log.refresh()
            missing = [i for i in acked_ids if not log.accepted(i)]
            try:
                open_rows = Delivery.objects.filter(status__in=Delivery.OPEN_STATUSES).count()
            except Exception:
                connection.close()
                open_rows = -1
            if not missing and open_rows == 0:
                break
            if time.monotonic() > deadline:
                print(
                    f"  drain timeout: {len(missing)} not received, {open_rows} deliveries open",
                    flush=True,
                )
                break
            time.sleep(1.0)
        drained_in = time.time() - drain_started
        time.sleep(1.0)
        log.refresh()

        # everything the database holds, not only what the publisher saw acknowledged; but not
        # Atlas's own operator events (target.circuit_opened …): the soak's receiver is not
        # subscribed to them, so they rightly go nowhere
        events = {
            str(e["id"]): e["created_at"].timestamp()
            for e in OutboxEvent.objects.filter(tenant_id=self.tenant_id)
            .exclude(topic=OPERATOR_TOPIC)
            .values("id", "created_at")
        }
        statuses = Counter(
            Delivery.objects.filter(tenant_id=self.tenant_id).values_list("status", flat=True)
        )
        published = set(events) | acked_ids
        delivered = {i for i in published if log.accepted(i)}
        lost = sorted(published - delivered)

        lags = []
        for event_id in delivered:
            first = log.first_accepted(event_id)
            if event_id in events:
                lags.append(max(0.0, first - events[event_id]))
        lag = summarize_latencies(lags)

        duplicates, causes = self.duplicates(log)
        recoveries = self.recoveries(log, publisher, events)
        alive = {name: p.poll() is None for name, p in self.processes.items()}
        unexpected_exits = [name for name, ok in alive.items() if not ok and name != "migrate"]

        summary = [
            {"measure": "published (acknowledged by the API)", "value": len(acked_ids)},
            {"measure": "events in the database", "value": len(events)},
            {"measure": "publishes never acknowledged", "value": len(publisher.failed)},
            {"measure": "delivered (accepted by the receiver)", "value": len(delivered)},
            {"measure": "LOST", "value": len(lost)},
            {"measure": "deliveries dead / still open", "value": _pair(statuses)},
            {"measure": "duplicate receipts (total)", "value": duplicates["receipts"]},
            {"measure": "  ids received more than once", "value": duplicates["ids"]},
            *[{"measure": f"  caused by {cause}", "value": n} for cause, n in causes.items()],
            {"measure": "end-to-end lag p50 (s)", "value": round(lag["p50_ms"] / 1000, 2)},
            {"measure": "end-to-end lag p99 (s)", "value": round(lag["p99_ms"] / 1000, 2)},
            {"measure": "end-to-end lag max (s)", "value": round(max(lags or [0]), 2)},
            {
                "measure": "publish seconds / drain seconds",
                "value": _secs(publish_seconds, drained_in),
            },
            {
                "measure": "receiver requests by outcome",
                "value": dict(sorted(log.outcomes.items())),
            },
            {"measure": "publish retries by error", "value": dict(publisher.errors) or "none"},
            {"measure": "processes not running at the end", "value": unexpected_exits or "none"},
        ]
        print_table(
            f"Outbox soak: {a.events:,} events, faults {a.faults} (run {self.run_id})", summary
        )
        print_table("Recovery after each fault", [r["row"] for r in recoveries] or [{"fault": "-"}])
        if lost:
            print(f"LOST event ids (first 20): {lost[:20]}")
            self.evidence(lost[:5])

        report = {
            "events": a.events,
            "rate_per_s": a.rate,
            "fault_schedule": a.faults,
            "settings": {
                "OUTBOX_BACKOFF_BASE_SECONDS": a.backoff_base,
                "OUTBOX_BACKOFF_MAX_SECONDS": a.backoff_max,
                "OUTBOX_LEASE_SECONDS": a.lease,
                "OUTBOX_MAX_ATTEMPTS": a.max_attempts,
                "OUTBOX_CIRCUIT_OPEN_SECONDS": a.circuit_open,
                "target_timeout_seconds": a.target_timeout,
                "receiver": {"p500": a.p500, "preset": a.preset, "pslow": a.pslow},
            },
            "published": len(acked_ids),
            "events_in_database": len(events),
            "publish_failed": len(publisher.failed),
            "delivered": len(delivered),
            "lost": len(lost),
            "lost_ids": lost[:100],
            "delivery_statuses": dict(statuses),
            "duplicates": duplicates,
            "duplicate_causes": causes,
            "lag_seconds": {
                k.removesuffix("_ms") + ("_s" if k.endswith("_ms") else ""): (
                    round(v / 1000, 3) if k.endswith("_ms") and v is not None else v
                )
                for k, v in lag.items()
            },
            "publish_seconds": round(publish_seconds, 1),
            "drain_seconds": round(drained_in, 1),
            "receiver_outcomes": dict(log.outcomes),
            "publish_errors": dict(publisher.errors),
            "recoveries": [r["json"] for r in recoveries],
            "faults": [
                {
                    **{k: v for k, v in f.items() if k != "leased_at_kill"},
                    "leased_at_kill": len(f.get("leased_at_kill", ())),
                }
                for f in self.faults
            ],
            "processes_not_running": unexpected_exits,
            "worker_restarts": dict(self.restarts),
            "rows": summary,
        }
        write_report(a.report, report)
        failed = bool(lost) or bool(publisher.failed) or open_rows != 0
        print("RESULT:", "FAIL" if failed else "PASS", flush=True)
        return 1 if failed else 0

    def duplicates(self, log: ReceiverLog) -> tuple[dict, dict]:
        killed: set[str] = set()
        for fault in self.faults:
            killed.update(fault.get("leased_at_kill", ()))
        windows = []
        for fault in self.faults:
            if fault["kind"] == "pg" and "up_at" in fault:
                windows.append(("PostgreSQL restart", fault["at"] - 1, fault["up_at"] + 1))
            if fault["kind"] == "receiver":
                windows.append(("receiver stop", fault["at"] - 1, fault["at"] + 1))
        causes: Counter = Counter()
        receipts = ids = 0
        for webhook_id, _ in log.receipts.items():
            accepted = log.accepted(webhook_id)
            if len(accepted) < 2:
                continue
            extra = len(accepted) - 1
            receipts += extra
            ids += 1
            if webhook_id in killed:
                cause = "killed worker's expired lease"
            elif any(outcome == "slow" for _, outcome in accepted):
                cause = "receiver answered after the timeout"
            else:
                cause = next(
                    (
                        name
                        for name, start, end in windows
                        if any(start <= at <= end for at, _ in accepted)
                    ),
                    "other",
                )
            causes[cause] += extra
        return {"receipts": receipts, "ids": ids}, dict(causes)

    def recoveries(self, log: ReceiverLog, publisher: Publisher, events: dict) -> list[dict]:
        from outbox.models import Delivery

        out = []
        for fault in self.faults:
            kind = fault["kind"]
            if "error" in fault:
                out.append(_recovery(kind, fault["at"] - self.t0, None, f"error {fault['error']}"))
                continue
            if kind == "kill":
                # recovered when every delivery the dead worker held is recorded delivered
                leased = fault["leased_at_kill"]
                done = [
                    at.timestamp()
                    for at in Delivery.objects.filter(
                        event_id__in=leased, delivered_at__isnull=False
                    ).values_list("delivered_at", flat=True)
                ]
                seconds = max(done) - fault["at"] if done else 0.0
                detail = (
                    f"{fault['process']}: {len(leased)} leased deliveries, "
                    f"{len(done)} delivered again after the lease expired"
                    if leased
                    else f"{fault['process']}: nothing leased at the kill"
                )
                out.append(_recovery(kind, fault["at"] - self.t0, seconds, detail))
            elif kind == "pg":
                up = fault["up_at"]
                api = min((t for t in publisher.ok_times if t >= up), default=None)
                first_delivered = (
                    Delivery.objects.filter(delivered_at__gte=_dt(up))
                    .order_by("delivered_at")
                    .values_list("delivered_at", flat=True)
                    .first()
                )
                delivered_at = first_delivered.timestamp() if first_delivered else None
                ends = [t for t in (api, delivered_at) if t]
                seconds = max(ends) - up if ends else None
                detail = (
                    f"down {up - fault['stopped_at']:.1f} s; API ok after {_s(api, up)}, "
                    f"first delivery recorded after {_s(delivered_at, up)}"
                )
                out.append(_recovery(kind, fault["at"] - self.t0, seconds, detail))
            elif kind == "receiver":
                up = fault.get("up_at")
                if up is None:
                    out.append(_recovery(kind, fault["at"] - self.t0, None, "never restarted"))
                    continue
                backlog = [i for i, created in events.items() if created < up]
                firsts = [log.first_accepted(i) for i in backlog]
                late = [t for t in firsts if t is not None and t >= up]
                first_after = min((t for t in late), default=None)
                cleared = max(late) if late else up
                detail = (
                    f"down {up - fault['at']:.1f} s; first delivery {_s(first_after, up)} after, "
                    f"backlog of {len(late)} cleared"
                )
                out.append(_recovery(kind, fault["at"] - self.t0, cleared - up, detail))
        return out

    def evidence(self, lost: list[str]) -> None:
        from outbox.models import Delivery, DeliveryAttempt

        for event_id in lost:
            for delivery in Delivery.objects.filter(event_id=event_id):
                attempts = list(
                    DeliveryAttempt.objects.filter(delivery=delivery)
                    .order_by("number")
                    .values_list("number", "outcome", "status_code", "error", "worker")
                )
                print(
                    f"  {event_id}: status={delivery.status} attempts={delivery.attempts} "
                    f"locked_by={delivery.locked_by!r} last_error={delivery.last_error[:120]!r}"
                )
                for attempt in attempts:
                    print(f"     {attempt}")

    def shutdown(self):
        for name in ("web", "worker-1", "worker-2", "qcluster", "receiver"):
            stop_process(self.processes.get(name), 20)
        try:
            from django.db import connections

            connections.close_all()
        except Exception:
            pass
        self.pg.shutdown()


def _recovery(kind: str, at: float, seconds: float | None, detail: str) -> dict:
    row = {
        "fault": kind,
        "at_s": round(at, 1),
        "recovered_in_s": round(seconds, 1) if seconds is not None else "n/a",
        "detail": detail,
    }
    return {"row": row, "json": row}


def _dt(ts: float):
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC)


def _s(at: float | None, since: float) -> str:
    return "n/a" if at is None else f"{at - since:.1f} s"


def _secs(a: float, b: float) -> str:
    return f"{a:.0f} / {b:.0f}"


def _pair(statuses: Counter) -> str:
    return f"{statuses.get('dead', 0)} / {statuses.get('pending', 0) + statuses.get('retrying', 0)}"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_receiver":
        receiver_main(argv[1:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small N, short faults (CI)")
    parser.add_argument("--events", type=int, help="N events (default 20,000; quick 500)")
    parser.add_argument("--rate", type=float, help="publishes per second (default 100; quick 25)")
    parser.add_argument("--publishers", type=int, default=8, help="publishing threads")
    parser.add_argument("--faults", help=f"schedule (default {DEFAULT_FAULTS!r})")
    parser.add_argument("--pg-down", type=float, default=3.0, help="default PostgreSQL downtime")
    parser.add_argument("--receiver-down", type=float, help="default receiver outage (60; quick 4)")
    parser.add_argument("--restart-delay", type=float, default=1.0)
    parser.add_argument("--kill-wait", type=float, default=20.0, help="max wait for a lease")
    parser.add_argument("--backoff-base", type=int, default=1)
    parser.add_argument("--backoff-max", type=int, default=4)
    parser.add_argument("--lease", type=int, default=10)
    parser.add_argument("--max-attempts", type=int, default=100)
    parser.add_argument("--circuit-open", type=int, default=3)
    parser.add_argument("--target-timeout", type=float, default=1.0)
    parser.add_argument("--p500", type=float, default=0.08)
    parser.add_argument("--preset", type=float, default=0.03)
    parser.add_argument("--pslow", type=float, default=0.02)
    parser.add_argument("--publish-retry", type=float, default=90.0, help="per event, seconds")
    parser.add_argument("--drain-timeout", type=float, help="seconds (default 900; quick 120)")
    parser.add_argument("--max-minutes", type=float, default=120, help="hard cap on the run")
    parser.add_argument("--report", default="soak", help="bench/results/<report>.json")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder (logs, pgdata)")
    args = parser.parse_args(argv)
    quick = args.quick
    args.events = args.events or (500 if quick else 20_000)
    args.rate = args.rate or (25.0 if quick else 100.0)
    args.faults = args.faults or (QUICK_FAULTS if quick else DEFAULT_FAULTS)
    args.receiver_down = args.receiver_down or (4.0 if quick else 60.0)
    args.drain_timeout = args.drain_timeout or (120.0 if quick else 900.0)

    soak = Soak(args)
    # the whole run is bounded: a watchdog ends it (and its children) past --max-minutes
    watchdog = threading.Timer(args.max_minutes * 60, _watchdog, args=(soak,))
    watchdog.daemon = True
    watchdog.start()
    code = 1
    try:
        code = soak.run()
    finally:
        soak.shutdown()
        if code != 0 or args.keep:
            print(f"logs and data kept in {soak.folder}")
            for name in ("web", "worker-1", "worker-2", "qcluster"):
                text = tail(soak.logs / f"{name}.log", 8)
                if "Traceback" in text or "Error" in text:
                    print(f"--- {name}.log (tail)\n{text}")
        else:
            import shutil

            shutil.rmtree(soak.folder, ignore_errors=True)
    return code


def _watchdog(soak: Soak):
    print("soak exceeded --max-minutes; stopping", flush=True)
    soak.shutdown()
    os._exit(2)


if __name__ == "__main__":
    sys.exit(main())
