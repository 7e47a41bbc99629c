"""Submissions soak: concurrent clients retry submits through a faulty network; exactly one
submission (and one `assessment.submitted` outbox event) per submissionId must result.

Runs gunicorn (2 workers) on its own embedded PostgreSQL in a temporary folder, and a small
TCP proxy on 127.0.0.1 in front of it that, per connection, at random:
  reset_before    resets the client before forwarding anything (the request never arrives)
  drop_response   forwards the request, reads the server's whole response, then resets the
                  client: the submission is committed but the client sees an error
  truncate        forwards the request, sends half of the response, then resets the client
  slow            forwards everything after a pause
  (otherwise)     forwards everything.
Each submissionId is sent by --racers clients at the same time (same body, as a browser
retrying in two tabs would); each client retries on any error until it gets 201 or 200
(bounded in attempts and time). Then the database is checked.

Prints a table and writes bench/results/soak_submit.json; exits 1 on any violation.

Usage: .venv/bin/python bench/soak_submit.py [--quick] [--submissions 2000] [--clients 16]
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import shutil
import socket
import struct
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
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

FATES = ("reset_before", "drop_response", "truncate", "slow")


class FaultyProxy:
    """A TCP proxy on 127.0.0.1 that breaks connections at random (one request each: the
    clients send `Connection: close`)."""

    def __init__(self, upstream_port: int, odds: dict[str, float], seed: int = 7):
        self.upstream_port, self.odds = upstream_port, odds
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.fates: Counter = Counter()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(512)
        self.port = self.sock.getsockname()[1]
        self.stopped = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._accept, daemon=True).start()

    def stop(self) -> None:
        self.stopped.set()
        self.sock.close()

    def _fate(self) -> str:
        with self.lock:
            roll = self.rng.random()
            for fate in FATES:
                if roll < self.odds[fate]:
                    self.fates[fate] += 1
                    return fate
                roll -= self.odds[fate]
            self.fates["pass"] += 1
            return "pass"

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    def _handle(self, client: socket.socket) -> None:
        client.settimeout(30)
        fate = self._fate()
        try:
            if fate == "reset_before":
                _reset(client)
                return
            request = _read_request(client)
            if request is None:
                client.close()
                return
            if fate == "slow":
                time.sleep(0.5)
            with socket.create_connection(("127.0.0.1", self.upstream_port), timeout=30) as up:
                up.sendall(request)
                response = _read_to_eof(up)
            if fate == "drop_response":
                _reset(client)
            elif fate == "truncate":
                client.sendall(response[: max(1, len(response) // 2)])
                _reset(client)
            else:
                client.sendall(response)
                client.close()
        except OSError:
            client.close()


def _reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _read_request(sock: socket.socket) -> bytes | None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        body += chunk
    return head + b"\r\n\r\n" + body


def _read_to_eof(sock: socket.socket) -> bytes:
    parts = []
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return b"".join(parts)
        parts.append(chunk)


class Clients:
    def __init__(self, port: int, key: str, *, attempts: int, seconds: float):
        self.port, self.key = port, key
        self.attempts, self.seconds = attempts, seconds
        self.lock = threading.Lock()
        self.statuses: dict[str, list[int]] = defaultdict(list)
        self.replay_headers_missing = 0
        self.errors: Counter = Counter()
        self.gave_up: list[str] = []
        self.latencies: list[float] = []
        self.bodies_seen: dict[str, set[str]] = defaultdict(set)
        self.attempts_per_submit: list[int] = []

    def submit(self, body: dict) -> None:
        """Until 201/200, with the same body every time (bounded in attempts and seconds)."""
        payload = json.dumps(body)
        sid = body["submissionId"]
        started = time.monotonic()
        pause = 0.05
        for attempt in range(1, self.attempts + 1):
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
                conn.request(
                    "POST",
                    "/api/assessments/submit",
                    payload,
                    {
                        "Authorization": f"Bearer {self.key}",
                        "Content-Type": "application/json",
                        "Connection": "close",
                    },
                )
                response = conn.getresponse()
                content = response.read()
                replayed = response.getheader("Idempotent-Replayed")
                conn.close()
                with self.lock:
                    self.statuses[sid].append(response.status)
                    if response.status in (200, 201):
                        data = json.loads(content)
                        self.bodies_seen[sid].add(json.dumps(data.get("answers"), sort_keys=True))
                        if response.status == 200 and replayed != "true":
                            self.replay_headers_missing += 1
                        self.latencies.append(time.monotonic() - started)
                        self.attempts_per_submit.append(attempt)
                        return
                    self.errors[f"http {response.status}"] += 1
            except (OSError, http.client.HTTPException, ValueError) as exc:
                with self.lock:
                    self.errors[type(exc).__name__] += 1
            if time.monotonic() - started > self.seconds:
                break
            time.sleep(pause * random.uniform(0.5, 1.5))
            pause = min(pause * 2, 1.0)
        with self.lock:
            self.gave_up.append(sid)


def run(args) -> int:
    folder = Path(tempfile.mkdtemp(prefix="atlas-soak-submit-"))
    logs = folder / "logs"
    pg = EmbeddedPostgres(folder)
    web = proxy = None
    code = 1
    try:
        print(f"folder {folder}; starting an own embedded PostgreSQL …", flush=True)
        pg.start()
        env = atlas_env(pg.create_database("atlas_soak_submit"), folder)
        migrate = spawn("migrate", manage_command("migrate", "--noinput"), env, logs)
        if migrate.wait(timeout=600) != 0:
            raise SystemExit("migrate failed:\n" + tail(logs / "migrate.log"))
        import os

        os.environ.update({k: env[k] for k in ("DATABASE_URL", "ATLAS_VAR_DIR", "CACHE_DIR")})
        os.environ.update(SECRET_KEY=env["SECRET_KEY"], DJANGO_SETTINGS_MODULE="config.settings")
        sys.path.insert(0, str(ROOT))
        import django

        django.setup()
        from tenants import rls

        # set-up and checks see every tenant's rows (row-level security: docs/tenancy.md)
        rls.enter_system_scope("soak set-up and checks")
        from django.db import connection

        from tenants.services import apikey_create, tenant_create

        tenant = tenant_create(name="soak-submit")
        _key, raw_key = apikey_create(tenant=tenant, kind="secret")
        connection.close()

        web_port = free_port()
        web = spawn("web", gunicorn_command(web_port), env, logs)
        wait_http(f"http://127.0.0.1:{web_port}/health", 90, web)
        odds = {
            "reset_before": args.p_reset,
            "drop_response": args.p_drop,
            "truncate": args.p_truncate,
            "slow": args.p_slow,
        }
        proxy = FaultyProxy(web_port, odds)
        proxy.start()
        clients = Clients(proxy.port, raw_key, attempts=args.attempts, seconds=args.retry_seconds)

        ids = [str(uuid.uuid4()) for _ in range(args.submissions)]
        bodies = {
            sid: {
                "submissionId": sid,
                "sessionId": str(uuid.uuid4()),
                "answers": {f"q{i}": random.randint(0, 4) for i in range(10)},
                "result": {"score": random.randint(0, 100)},
                "email": "soak@example.com",
            }
            for sid in ids
        }
        groups = max(1, args.clients // args.racers)
        print(
            f"{args.submissions:,} submissionIds, {args.clients} clients "
            f"({args.racers} racing per id), proxy odds {odds} …",
            flush=True,
        )
        shares = [ids[g::groups] for g in range(groups)]

        def client_loop(share: list[str], deadline: float):
            for sid in share:
                if time.monotonic() > deadline:
                    return
                clients.submit(bodies[sid])

        deadline = time.monotonic() + args.max_seconds
        threads = [
            threading.Thread(target=client_loop, args=(shares[g], deadline), daemon=True)
            for g in range(groups)
            for _ in range(args.racers)
        ]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=args.max_seconds + 60)
        elapsed = time.monotonic() - started

        code = check(args, tenant.id, ids, clients, proxy, elapsed)
    finally:
        if proxy is not None:
            proxy.stop()
        stop_process(web, 20)
        try:
            from django.db import connections

            connections.close_all()
        except Exception:
            pass
        pg.shutdown()
        if code == 0 and not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
        else:
            print(f"logs and data kept in {folder}")
    return code


def check(args, tenant_id, ids, clients: Clients, proxy: FaultyProxy, elapsed: float) -> int:
    from django.db.models import Count

    from assessments.models import Submission
    from outbox.models import OutboxEvent

    rows = Counter(
        str(i) for i in Submission.objects.filter(tenant_id=tenant_id).values_list("id", flat=True)
    )
    events = Counter(
        key.removeprefix("assessment.submitted:")
        for key in OutboxEvent.objects.filter(
            tenant_id=tenant_id, event_type="assessment.submitted"
        ).values_list("idempotency_key", flat=True)
    )
    dup_events = (
        OutboxEvent.objects.filter(tenant_id=tenant_id)
        .values("idempotency_key")
        .annotate(n=Count("id"))
        .filter(n__gt=1)
        .count()
    )
    missing = [sid for sid in ids if rows[sid] == 0]
    doubled = [sid for sid in ids if rows[sid] > 1]
    missing_events = [sid for sid in ids if rows[sid] and events[sid] != 1]
    created_twice = [sid for sid in ids if clients.statuses[sid].count(201) > 1]
    inconsistent = [sid for sid, seen in clients.bodies_seen.items() if len(seen) > 1]
    server_errors = sum(n for k, n in clients.errors.items() if k.startswith("http 5"))
    status_total = Counter(s for statuses in clients.statuses.values() for s in statuses)
    attempts = clients.attempts_per_submit
    never_201 = [sid for sid in ids if rows[sid] and 201 not in clients.statuses[sid]]
    latency = summarize_latencies(clients.latencies)

    violations = {
        "submissionIds without a row": len(missing),
        "submissionIds with more than one row": len(doubled),
        "submissions without exactly one outbox event": len(missing_events),
        "outbox idempotency keys used twice": dup_events,
        "submissionIds answered 201 more than once": len(created_twice),
        "replays (200) without Idempotent-Replayed: true": clients.replay_headers_missing,
        "different bodies returned for one submissionId": len(inconsistent),
        "5xx responses": server_errors,
        "clients that gave up": len(clients.gave_up),
    }
    table = [
        {"measure": "submissionIds", "value": len(ids)},
        {"measure": "clients (racing per id)", "value": f"{args.clients} ({args.racers})"},
        {"measure": "submission rows", "value": sum(rows.values())},
        {"measure": "assessment.submitted outbox events", "value": sum(events.values())},
        {"measure": "proxy fates", "value": dict(sorted(proxy.fates.items()))},
        {"measure": "responses seen by clients", "value": dict(sorted(status_total.items()))},
        {"measure": "client errors (retried)", "value": dict(clients.errors) or "none"},
        {"measure": "client submits needing a retry", "value": sum(1 for a in attempts if a > 1)},
        {"measure": "attempts per client submit, max", "value": max(attempts or [0])},
        {"measure": "ids whose 201 never reached a client (replayed)", "value": len(never_201)},
        {"measure": "submit incl. retries p50 / p99 (ms)", "value": _pair(latency)},
        {"measure": "seconds", "value": round(elapsed, 1)},
        *[{"measure": f"VIOLATION {k}", "value": v} for k, v in violations.items()],
    ]
    print_table(f"Submissions soak ({len(ids):,} ids through a faulty proxy)", table)
    failed = any(violations.values())
    write_report(
        args.report,
        {
            "submission_ids": len(ids),
            "clients": args.clients,
            "racers_per_id": args.racers,
            "proxy_odds": proxy.odds,
            "proxy_fates": dict(proxy.fates),
            "submission_rows": sum(rows.values()),
            "outbox_events": sum(events.values()),
            "responses": dict(status_total),
            "client_errors": dict(clients.errors),
            "latency_incl_retries": latency,
            "violations": violations,
            "examples": {
                "missing": missing[:10],
                "doubled": doubled[:10],
                "created_twice": created_twice[:10],
                "gave_up": clients.gave_up[:10],
            },
            "seconds": round(elapsed, 1),
            "rows": table,
        },
    )
    print("RESULT:", "FAIL" if failed else "PASS", flush=True)
    return 1 if failed else 0


def _pair(latency: dict) -> str:
    return f"{latency['p50_ms']:.0f} / {latency['p99_ms']:.0f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="200 ids, 8 clients (CI)")
    parser.add_argument("--submissions", type=int, help="submissionIds (default 2000; quick 200)")
    parser.add_argument("--clients", type=int, help="client threads (default 16; quick 8)")
    parser.add_argument("--racers", type=int, default=2, help="clients sending each id at once")
    parser.add_argument("--p-reset", type=float, default=0.05)
    parser.add_argument("--p-drop", type=float, default=0.10)
    parser.add_argument("--p-truncate", type=float, default=0.03)
    parser.add_argument("--p-slow", type=float, default=0.02)
    parser.add_argument("--attempts", type=int, default=30, help="per client submit")
    parser.add_argument("--retry-seconds", type=float, default=60, help="per client submit")
    parser.add_argument("--max-seconds", type=float, default=900, help="whole client phase")
    parser.add_argument("--report", default="soak_submit")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)
    args.submissions = args.submissions or (200 if args.quick else 2000)
    args.clients = args.clients or (8 if args.quick else 16)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
