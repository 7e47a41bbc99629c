"""What row-level security costs on the hot paths: RLS on vs off, in the same process run.

  on   the application as it runs: the application role under its policies, the scope
       declared lazily (tenants/rls.py, tenants/db/base.py)
  off  the same code as the login role (the tables' owner, a superuser here, which row-level
       security does not apply to) with no scope statements at all: Atlas before RLS

Paths, each timed in rounds that alternate which mode goes first (the machine is shared);
the ratio is the median over rounds of each round's on/off:
  events    POST /api/assessments/events, batches of 50 (in-process client, secret key)
  submit    POST /api/assessments/submit
  publish   outbox event_publish in its own transaction, tenant scope, one enabled target
  delivery  one outbox worker delivering a backlog to a local receiver (another process)
Two measures per path: wall time, and CPU time of this process plus its PostgreSQL backend
(what RLS adds work to; less disturbed by other load than wall time). Floor: on/off <= 1.10.
Usage: python bench/rls.py [--rounds 9]
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import statistics
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from _common import print_table, setup_django, teardown_django, write_report

FLOOR = 1.10


def _receiver_main(port: int, ready) -> None:
    class Ok(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            self.rfile.read(int(self.headers.get("content-length") or 0))
            self.send_response(200)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Ok)
    ready.set()
    server.serve_forever()


def start_receiver() -> tuple[multiprocessing.Process, str]:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ready = multiprocessing.Event()
    proc = multiprocessing.Process(target=_receiver_main, args=(port, ready), daemon=True)
    proc.start()
    ready.wait(10)
    return proc, f"http://127.0.0.1:{port}/hook"


@contextlib.contextmanager
def mode(name: str):
    """on: as the application runs; off: the owner, no RLS, no scope statements."""
    from django.db import connection

    from tenants import rls

    if name == "on":
        yield
        return
    connection.ensure_connection()
    with rls.owner_mode(connection):
        yield


# --- the paths (each returns the seconds its work took) -------------------------------------


def events_path(client, batches: int) -> None:
    for _ in range(batches):
        prefix = uuid.uuid4().hex
        events = [
            {
                "messageId": f"{prefix}-{i}",
                "name": "question_viewed",
                "properties": {"q": i},
                "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            for i in range(50)
        ]
        response = client.post("/api/assessments/events", {"events": events}, format="json")
        assert response.status_code in (200, 201, 202), response.content


def submit_path(client, count: int) -> None:
    for _ in range(count):
        body = {
            "submissionId": str(uuid.uuid4()),
            "sessionId": str(uuid.uuid4()),
            "answers": {f"q{i}": i for i in range(20)},
            "result": {"score": 42},
            "email": "bench@example.com",
        }
        response = client.post("/api/assessments/submit", body, format="json")
        assert response.status_code == 201, response.content


def publish_path(tenant, count: int) -> None:
    from django.db import transaction

    from outbox.services import event_publish
    from tenants import rls

    with rls.tenant_scope(tenant.pk):  # as a request of this tenant runs it
        for i in range(count):
            with transaction.atomic():
                event_publish(
                    tenant=tenant, event_type="bench.published", topic="bench", payload={"n": i}
                )


def delivery_backlog(tenant, count: int) -> None:
    """Untimed: `count` pending deliveries (the publish path's own are marked delivered)."""
    from django.db import transaction

    from outbox.models import Delivery
    from outbox.services import event_publish
    from tenants import rls

    with rls.system_scope("bench backlog"), transaction.atomic():
        Delivery.objects.exclude(status=Delivery.Status.DELIVERED).update(
            status=Delivery.Status.DELIVERED
        )
        for _ in range(count):
            event_publish(tenant=tenant, event_type="bench.delivered", topic="bench", payload={})


def delivery_path() -> None:
    from outbox.models import Delivery
    from outbox.worker import Worker
    from tenants import rls

    Worker(concurrency=8).run(exit_when_idle=True)
    with rls.system_scope("bench check"):
        pending = Delivery.objects.exclude(status=Delivery.Status.DELIVERED).count()
    assert pending == 0, f"{pending} deliveries not delivered"


def measured(work, prepare=None) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process plus its PostgreSQL backend) of `work`.
    CPU is what RLS adds work to; it suffers less than wall time from a busy machine."""
    from _outbox_pipeline import cpu_seconds
    from django.db import connection

    if prepare:
        prepare()
    connection.ensure_connection()
    backend = connection.connection.info.backend_pid
    cpu, wall = time.process_time() + cpu_seconds(backend), time.perf_counter()
    work()
    wall = time.perf_counter() - wall
    if connection.connection is None or connection.connection.info.backend_pid != backend:
        return wall, float("nan")  # reconnected meanwhile: the backend's CPU is unknown
    return wall, time.process_time() + cpu_seconds(backend) - cpu


# --- the run ----------------------------------------------------------------------------------


def main():
    # one connection for the whole run: the CPU of its PostgreSQL backend is measured
    os.environ.setdefault("DB_CONN_MAX_AGE", "3600")
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--batches", type=int, default=10, help="event batches of 50 per round")
    parser.add_argument("--submits", type=int, default=30)
    parser.add_argument("--publishes", type=int, default=100)
    parser.add_argument("--deliveries", type=int, default=100)
    args = parser.parse_args()
    old_name = setup_django("rls")
    receiver, url = start_receiver()
    try:
        report = run(args, url)
    finally:
        receiver.terminate()
        teardown_django(old_name)
    write_report("rls", report)
    for measure in ("on/off", "cpu on/off"):
        over = [row["path"] for row in report["rows"] if row[measure] > FLOOR]
        if over:
            print(f"{measure} over the {FLOOR:.2f} floor: {', '.join(over)}")


def run(args, url: str) -> dict:
    from django.core.cache import cache
    from django.db import connection
    from rest_framework.test import APIClient

    from outbox.services import target_create
    from tenants import rls
    from tenants.models import Tenant
    from tenants.services import apikey_create

    cache.clear()
    with rls.system_scope("bench set-up"):
        tenant = Tenant.objects.create(name=f"bench-{uuid.uuid4().hex[:6]}")
        _key, raw = apikey_create(tenant=tenant, kind="secret")
        target_create(tenant=tenant, name="hook", kind="webhook", url=url)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    paths = {
        "events (batches of 50)": (lambda: events_path(client, args.batches), None),
        "submit": (lambda: submit_path(client, args.submits), None),
        "outbox publish": (lambda: publish_path(tenant, args.publishes), None),
        "one-worker delivery": (delivery_path, lambda: delivery_backlog(tenant, args.deliveries)),
    }
    # warm-up (caches, connections), then statistics for the planner as a live database has
    # them: fresh tables without statistics made the first rounds swing either way
    for _ in range(2):
        for work, prepare in paths.values():
            for name in ("on", "off"):
                with mode(name):
                    measured(work, prepare)
    with mode("off"), connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    wall: dict[str, dict[str, list[float]]] = {p: {"on": [], "off": []} for p in paths}
    cpu: dict[str, dict[str, list[float]]] = {p: {"on": [], "off": []} for p in paths}
    for round_number in range(args.rounds):
        order = ("on", "off") if round_number % 2 == 0 else ("off", "on")
        for path, (work, prepare) in paths.items():
            for name in order:
                with mode(name):
                    seconds, cpu_seconds = measured(work, prepare)
                wall[path][name].append(seconds)
                cpu[path][name].append(cpu_seconds)
    rows = []
    for path in paths:
        rows.append(
            {
                "path": path,
                "off ms/round": round(statistics.median(wall[path]["off"]) * 1000, 1),
                "on ms/round": round(statistics.median(wall[path]["on"]) * 1000, 1),
                "on/off": _paired_ratio(wall[path]),
                "cpu on/off": _paired_ratio(cpu[path]),
                "floor": FLOOR,
            }
        )
    print_table(f"RLS on vs off: median of {args.rounds} paired rounds", rows)
    return {"rows": rows, "wall_seconds": wall, "cpu_seconds": cpu, "args": vars(args)}


def _paired_ratio(runs: dict[str, list[float]]) -> float:
    """Median over rounds of on/off: each round's two ran back to back, so the ratio cancels
    the machine's drift between rounds."""
    ratios = [
        on / off
        for on, off in zip(runs["on"], runs["off"], strict=True)
        if off > 0 and on == on and off == off  # nan: a reconnect spoilt that round's CPU
    ]
    return round(statistics.median(ratios), 3) if ratios else float("nan")


if __name__ == "__main__":
    main()
