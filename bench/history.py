"""History-proof operations: the console, /metrics and /health at empty / 1M / 10M rows.

One throwaway database per size (<db>_hist_0, <db>_hist_1000000, …), all cloned from one
migrated template with the same tenants, targets and 100 fresh events, then filled with SQL
(INSERT … SELECT generate_series, foreign keys and indexes dropped during the load and built
after it, then VACUUM ANALYZE — logged tables, so plans and costs are the real ones) with N
delivered events spread over the last 28 days, one delivery each, 1.1 attempts per delivery
and 2N analytics events, plus 48 h of per-minute delivery counters.

Then, in rounds that alternate between the databases (so whatever the shared machine does
lands on every size alike), it measures in this process:

  pages     GET /admin/, /admin/outbox/delivery/, /admin/outbox/outboxevent/,
            /admin/assessments/analyticsevent/, /metrics, /health (Django test client):
            median per size and ratio to empty; every query of each page is EXPLAINed
            (sequential scan of a history table?) and the slowest one is shown with
            EXPLAIN (ANALYZE, BUFFERS)
  publish   event_publish in its own transaction (p50/p99)
  claim     deliveries/s of an in-process Deliverer draining 2,000 due events to a local
            receiver
  ingest    assessments.services.events_store of 50-event batches (p50/p99, events/s)
  prune     (--prune) outbox_prune of the events older than 14 days in the 1M database
            while a Deliverer drains a backlog: delivery rate during vs before the prune

Filled databases are kept (--keep, default) and reused by later runs: filling 10M rows takes
a while on a small machine. --drop removes them.

Usage: .venv/bin/python bench/history.py [--sizes 1000000 10000000] [--rounds 3] [--prune]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import statistics
import sys
import time
import uuid

from _common import ROOT, print_table, summarize_latencies, write_report

HISTORY_TABLES = (
    "outbox_outboxevent",
    "outbox_delivery",
    "outbox_deliveryattempt",
    "assessments_analyticsevent",
)
LOADED_TABLES = (*HISTORY_TABLES, "outbox_deliverystat")
PAGES = (
    "/admin/",
    "/admin/outbox/delivery/",
    "/admin/outbox/outboxevent/",
    "/admin/assessments/analyticsevent/",
    "/metrics",
    "/health",
)
FLOORS = {"page_ratio_max": 2.0, "hot_path_within": 0.15, "delivery_during_prune_min": 0.80}
TENANTS = 4
HISTORY_DAYS = 28


# --- databases ---------------------------------------------------------------------------------


def setup():
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ.setdefault("THROTTLE_ENABLED", "false")
    os.environ.setdefault("OUTBOX_ALLOWED_TARGET_NETWORKS", "127.0.0.0/8")
    import django

    django.setup()
    from tenants import rls

    # the bench's set-up and checks read and write every tenant's rows, like an operator
    # (row-level security: docs/tenancy.md); the console's queries run in the staff's scope
    rls.enter_system_scope("history bench set-up and checks")
    import logging

    logging.getLogger("django.request").setLevel(logging.ERROR)
    from django.conf import settings
    from django.test.utils import setup_test_environment

    setup_test_environment()
    settings.DEBUG = False
    from django.db import connection

    return connection.settings_dict["NAME"]


def admin_sql(sql: str) -> None:
    """Statements that cannot run inside a database (CREATE/DROP DATABASE)."""
    import psycopg
    from django.db import connection

    params = connection.get_connection_params()
    params["dbname"] = "postgres"
    with psycopg.connect(**params, autocommit=True) as conn:
        conn.execute(sql)


def database_exists(name: str) -> bool:
    import psycopg
    from django.db import connection

    params = connection.get_connection_params()
    params["dbname"] = "postgres"
    with psycopg.connect(**params, autocommit=True) as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()


def use(name: str) -> None:
    from django.db import connection

    connection.close()
    connection.settings_dict["NAME"] = name


def execute(sql: str, params=None, *, owner: bool = False):
    """`owner`: as the tables' owner (the fill's DDL, VACUUM ANALYZE); otherwise in the
    bench's system scope, as the console's own queries run (row-level security)."""
    import contextlib

    from django.db import connection

    from tenants import rls

    mode = rls.owner_mode(connection) if owner else contextlib.nullcontext()
    with mode, connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall() if cursor.description else None


def template_create(name: str) -> None:
    """Migrated, with TENANTS tenants × 2 webhook targets, a superuser and 100 fresh
    (pending) events: the 'empty' database, and what every size is cloned from."""
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.db import connection, transaction

    from outbox.services import event_publish, target_create
    from tenants.services import tenant_create

    admin_sql(f'DROP DATABASE IF EXISTS "{name}"')
    admin_sql(f'CREATE DATABASE "{name}"')
    use(name)
    call_command("migrate", verbosity=0)
    User.objects.create_superuser("bench", "bench@example.com", "bench-pw-123")
    for t in range(TENANTS):
        tenant = tenant_create(name=f"Tenant {t}")
        for k in range(2):
            target_create(
                tenant=tenant, name=f"hook{k}", kind="webhook", url="http://127.0.0.1:9/x"
            )
    tenants = list(connection.cursor().execute("SELECT id FROM tenants_tenant").fetchall())
    for i in range(100):
        with transaction.atomic():
            event_publish(
                tenant=tenants[i % TENANTS][0],
                event_type="order.paid",
                topic="payments",
                payload={"order": i},
            )
    connection.close()


def _constraints_and_indexes(table: str) -> tuple[list[str], list[str], list[str]]:
    """(drop statements, re-create statements for indexes, for constraints) of `table`'s
    foreign keys, unique constraints and secondary indexes (the primary key stays)."""
    drops, indexes, constraints = [], [], []
    for name, definition, _kind in execute(
        "SELECT conname, pg_get_constraintdef(oid), contype FROM pg_constraint "
        "WHERE conrelid = %s::regclass AND contype IN ('f', 'u')",
        [table],
    ):
        drops.append(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
        constraints.append(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}')
    for name, definition in execute(
        "SELECT i.relname, pg_get_indexdef(i.oid) FROM pg_index x "
        "JOIN pg_class i ON i.oid = x.indexrelid "
        "WHERE x.indrelid = %s::regclass AND NOT x.indisprimary "
        "AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid)",
        [table],
    ):
        drops.append(f'DROP INDEX "{name}"')
        indexes.append(definition)
    return drops, indexes, constraints


_FILL_SQL = [
    # N delivered events over the last HISTORY_DAYS days, oldest first (seq follows time)
    """
    INSERT INTO outbox_outboxevent (id, tenant_id, topic, event_type, payload, idempotency_key,
        ordering_key, occurred_at, created_at, updated_at, seq)
    SELECT gen_random_uuid(), (%(tenants)s::uuid[])[1 + i %% %(n_tenants)s],
           (ARRAY['assessments','payments','uploads'])[1 + i %% 3],
           (ARRAY['assessment.submitted','payment.completed','upload.stored'])[1 + i %% 3],
           jsonb_build_object('order', i, 'amount', 4900 + i %% 100, 'currency', 'eur',
                              'email', 'visitor' || i || '@example.com'),
           'hist-' || i, NULL, at, at, at, nextval('outbox_event_seq')
    FROM (SELECT i, now() - make_interval(days => %(days)s)
                 + (i::float8 / %(n)s) * make_interval(days => %(days)s) - interval '1 hour' AS at
          FROM generate_series(1, %(n)s) AS i) AS g
    """,
    # the template's 100 fresh events are the newest: they get the newest seqs too
    """
    UPDATE outbox_outboxevent SET seq = nextval('outbox_event_seq')
    WHERE idempotency_key NOT LIKE 'hist-%%'
    """,
    # one delivery per event, to one of its tenant's targets, delivered a second later
    """
    INSERT INTO outbox_delivery (tenant_id, event_id, target_id, ordering_key, status, attempts,
        next_attempt_at, locked_by, last_error, delivered_at, created_at, updated_at)
    SELECT e.tenant_id, e.id, t.id, NULL, 'delivered', 1, e.created_at, '', '',
           e.created_at + interval '1 second', e.created_at, e.created_at + interval '1 second'
    FROM outbox_outboxevent e
    JOIN outbox_target t ON t.tenant_id = e.tenant_id AND t.name = 'hook' || (e.seq %% 2)
    WHERE e.idempotency_key LIKE 'hist-%%'
    """,
    # one attempt per delivery, and a failed first try for one in ten
    """
    INSERT INTO outbox_deliveryattempt (created_at, updated_at, tenant_id, delivery_id, number,
        outcome, status_code, duration_ms, response_excerpt, error, worker)
    SELECT d.delivered_at, d.delivered_at, d.tenant_id, d.id, 1, 'delivered', 200,
           20 + d.id %% 80, 'ok', '', 'worker-1'
    FROM outbox_delivery d WHERE d.status = 'delivered'
    UNION ALL
    SELECT d.created_at, d.created_at, d.tenant_id, d.id, 0, 'retry', 503, 150, 'busy',
           'HTTP 503', 'worker-1'
    FROM outbox_delivery d WHERE d.status = 'delivered' AND d.id %% 10 = 0
    """,
    # 2N analytics events over the same days
    """
    INSERT INTO assessments_analyticsevent (tenant_id, message_id, name, session_id, properties,
        occurred_at, created_at, updated_at)
    SELECT (%(tenants)s::uuid[])[1 + i %% %(n_tenants)s], 'm-' || i,
           (ARRAY['page_view','question_answered','assessment_started','cta_click'])[1 + i %% 4],
           CASE WHEN i %% 5 = 0 THEN NULL ELSE gen_random_uuid() END,
           jsonb_build_object('question', 'q' || i %% 40, 'ms', i %% 9000),
           at, at, at
    FROM (SELECT i, now() - make_interval(days => %(days)s)
                 + (i::float8 / (2 * %(n)s)) * make_interval(days => %(days)s) AS at
          FROM generate_series(1, 2 * %(n)s) AS i) AS g
    """,
    # 48 h of per-minute counters for every target (bounded by retention, not by history)
    """
    INSERT INTO outbox_deliverystat (created_at, updated_at, tenant_id, target_id, minute,
        attempts, attempts_delivered, attempts_retry, attempts_permanent, delivered, dead,
        duration_ms_sum, duration_le, latency_seconds_sum, latency_le)
    SELECT m, m, t.tenant_id, t.id, m, 44, 40, 4, 0, 40, 0, 2600,
           ARRAY[0,0,10,40,44,44,44,44,44,44,44,44]::bigint[], 40,
           ARRAY[0,0,40,40,40,40,40,40,40,40,40,40]::bigint[]
    FROM outbox_target t,
         generate_series(date_trunc('minute', now()) - interval '48 hours',
                         date_trunc('minute', now()) - interval '1 minute',
                         interval '1 minute') AS m
    """,
]


def fill(name: str, template: str, n: int) -> float:
    """Clone the template and load `n` delivered events (and the rest) into it."""
    admin_sql(f'DROP DATABASE IF EXISTS "{name}"')
    admin_sql(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    use(name)
    started = time.monotonic()
    rows = execute("SELECT id FROM tenants_tenant ORDER BY name", owner=True)
    tenants = [str(row[0]) for row in rows]
    drops, indexes, constraints = [], [], []
    for table in LOADED_TABLES:
        d, i, c = _constraints_and_indexes(table)
        drops, indexes, constraints = drops + d, indexes + i, constraints + c
    for statement in drops:
        execute(statement, owner=True)
    params = {"tenants": tenants, "n_tenants": len(tenants), "n": n, "days": HISTORY_DAYS}
    for sql in _FILL_SQL:
        step = time.monotonic()
        execute("SET maintenance_work_mem = '256MB'", owner=True)
        execute(sql, params, owner=True)
        print(f"  {name}: {' '.join(sql.split()[:3])} … {time.monotonic() - step:.0f}s")
    step = time.monotonic()
    for statement in indexes + constraints:
        execute(statement, owner=True)
    print(f"  {name}: indexes and constraints {time.monotonic() - step:.0f}s")
    use(name)
    from django.db import connection

    connection.ensure_connection()
    connection.connection.autocommit = True
    for table in LOADED_TABLES:
        execute(f"VACUUM ANALYZE {table}", owner=True)
    execute("CHECKPOINT", owner=True)
    return time.monotonic() - started


# --- measurements ------------------------------------------------------------------------------


def _client():
    from django.test import Client

    client = Client(REMOTE_ADDR="127.0.0.1")
    from django.contrib.auth.models import User

    client.force_login(User.objects.get(username="bench"))
    return client


def page_time(path: str, repeats: int = 3) -> float:
    client = _client()
    client.get(path)  # warm: plans, caches
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        response = client.get(path)
        times.append(time.perf_counter() - started)
        assert response.status_code == 200, (path, response.status_code)
    return statistics.median(times)


def page_plans(path: str) -> dict:
    """Every query of one request: EXPLAIN each (sequential scan of a history table?), then
    EXPLAIN (ANALYZE, BUFFERS) of the slowest."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    client = _client()
    with CaptureQueriesContext(connection) as captured:
        client.get(path)
    seq_scans, slowest = [], None
    for query in captured.captured_queries:
        sql = query["sql"]
        if not sql.lstrip().upper().startswith(("SELECT", "WITH")):
            continue
        plan = "\n".join(row[0] for row in execute(f"EXPLAIN {sql}"))
        scanned = set(re.findall(r"Seq Scan on (\w+)", plan))
        seq_scans += [t for t in HISTORY_TABLES if t in scanned]
        if slowest is None or float(query["time"]) > float(slowest["time"]):
            slowest = query
    analyzed = ""
    if slowest is not None:
        rows = execute(f"EXPLAIN (ANALYZE, BUFFERS) {slowest['sql']}")
        analyzed = "\n".join(row[0] for row in rows)
    return {
        "queries": len(captured.captured_queries),
        "history_seq_scans": sorted(set(seq_scans)),
        "slowest_sql": slowest["sql"][:600] if slowest else "",
        "slowest_plan": analyzed,
    }


def publish_latencies(n: int) -> list[float]:
    from django.db import transaction

    from outbox.services import event_publish

    tenant = execute("SELECT id FROM tenants_tenant ORDER BY name LIMIT 1")[0][0]
    samples = []
    for i in range(n + 20):
        started = time.perf_counter()
        with transaction.atomic():
            event_publish(
                tenant=tenant, event_type="order.paid", topic="payments", payload={"order": i}
            )
        if i >= 20:  # the first few warm plans and caches
            samples.append(time.perf_counter() - started)
    return samples


def claim_rate(receiver_url: str, n: int) -> float:
    """Deliveries per second of an in-process Deliverer draining n due events of one target
    (the other targets are paused, so only this backlog is claimed)."""
    from django.db import transaction
    from django.utils import timezone

    from outbox.delivery import Deliverer
    from outbox.models import Target
    from outbox.services import event_publish, secret_generate

    tenant = execute("SELECT id FROM tenants_tenant ORDER BY name LIMIT 1")[0][0]
    Target.objects.exclude(name="claim").update(paused_at=timezone.now())
    Target.objects.update_or_create(
        tenant_id=tenant,
        name="claim",
        defaults={"kind": "webhook", "url": f"{receiver_url}/claim", "secret": secret_generate()},
    )
    with transaction.atomic():
        for i in range(n):
            event_publish(
                tenant=tenant,
                event_type="order.paid",
                topic="payments",
                payload={"order": i},
                target="claim",
            )
    deliverer = Deliverer(concurrency=32, worker_id="bench-claim")
    delivered, started = 0, time.perf_counter()
    try:
        while delivered < n:
            handled = deliverer.run_once()
            if handled == 0:
                break
            delivered += handled
    finally:
        deliverer.close()
    elapsed = time.perf_counter() - started
    Target.objects.update(paused_at=None)
    return delivered / elapsed


def ingest_latencies(batches: int) -> tuple[list[float], float]:
    from django.utils import timezone

    from assessments.services import events_store

    tenant = execute("SELECT id FROM tenants_tenant ORDER BY name LIMIT 1")[0][0]
    samples, started_all = [], time.perf_counter()
    now = timezone.now()
    for _ in range(batches):
        events = [
            {
                "message_id": uuid.uuid4().hex,
                "name": "page_view",
                "session_id": None,
                "properties": {"ms": 1},
                "occurred_at": now,
            }
            for _ in range(50)
        ]
        started = time.perf_counter()
        stored, _ = events_store(tenant_id=tenant, events=events)
        samples.append(time.perf_counter() - started)
        assert stored
    return samples, batches * 50 / (time.perf_counter() - started_all)


def start_receiver():
    """bench/outbox.py's asyncio receiver, in its own process."""
    spec = importlib.util.spec_from_file_location("bench_outbox", ROOT / "bench" / "outbox.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.start_receiver()


def prune_while_delivering(receiver_url: str, n: int) -> dict:
    """Delivery rate of a Deliverer draining n events, without and then with outbox_prune
    (events older than 14 days) running in a second thread on its own connection."""
    import threading

    from django.db import connection

    from outbox.retention import events_prune

    before = claim_rate(receiver_url, n)
    result = {}

    def prune():
        started = time.monotonic()
        result["pruned_events"] = events_prune(older_than_days=14, batch_size=1000)
        result["prune_seconds"] = round(time.monotonic() - started, 1)
        connection.close()

    thread = threading.Thread(target=prune)
    thread.start()
    time.sleep(2)  # the prune is under way
    during = []
    while thread.is_alive():
        during.append(claim_rate(receiver_url, n))
    thread.join()
    rate = statistics.median(during) if during else float("nan")
    return {
        "delivered_per_s_before": round(before, 1),
        "delivered_per_s_during_prune": round(rate, 1),
        "ratio": round(rate / before, 3),
        "rounds_during": len(during),
        **result,
    }


# --- main --------------------------------------------------------------------------------------


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--publish", type=int, default=300)
    parser.add_argument("--claim", type=int, default=2000)
    parser.add_argument("--ingest", type=int, default=200, help="batches of 50 events")
    parser.add_argument("--refill", action="store_true", help="fill again even if kept")
    parser.add_argument("--fill-only", action="store_true")
    parser.add_argument("--prune", action="store_true", help="prune test on the 1M database")
    parser.add_argument("--drop", action="store_true", help="drop the bench databases and exit")
    args = parser.parse_args()

    base = setup()
    template = f"{base}_hist_0"
    names = {0: template, **{n: f"{base}_hist_{n}" for n in args.sizes}}
    if args.drop:
        for name in names.values():
            admin_sql(f'DROP DATABASE IF EXISTS "{name}"')
        return
    fills = {}
    if args.refill or not database_exists(template):
        print(f"creating {template}")
        template_create(template)
    for n in args.sizes:
        if args.refill or not database_exists(names[n]):
            print(f"filling {names[n]} with {n:,} delivered events")
            fills[n] = round(fill(names[n], template, n), 1)
    if args.fill_only:
        return

    receiver, receiver_url = start_receiver()
    sizes = [0, *args.sizes]
    times: dict = {(n, p): [] for n in sizes for p in PAGES}
    publish: dict = {n: [] for n in sizes}
    claims: dict = {n: [] for n in sizes}
    ingest: dict = {n: [] for n in sizes}
    ingest_rate: dict = {n: [] for n in sizes}
    try:
        for r in range(args.rounds):
            order = sizes if r % 2 == 0 else list(reversed(sizes))
            for n in order:
                use(names[n])
                for path in PAGES:
                    times[(n, path)].append(page_time(path))
                publish[n] += publish_latencies(args.publish // args.rounds)
                claims[n].append(claim_rate(receiver_url, args.claim))
                samples, rate = ingest_latencies(args.ingest // args.rounds)
                ingest[n] += samples
                ingest_rate[n].append(rate)
            print(f"round {r + 1}/{args.rounds} done")
        plans = {}
        for n in sizes:
            use(names[n])
            plans[n] = {path: page_plans(path) for path in PAGES}
        prune = None
        if args.prune and 1_000_000 in args.sizes:
            use(names[1_000_000])
            prune = prune_while_delivering(receiver_url, args.claim)
    finally:
        receiver.terminate()
        use(base)

    page_rows = []
    for path in PAGES:
        row = {"page": path}
        empty = statistics.median(times[(0, path)])
        for n in sizes:
            row[f"{n:,} ms"] = round(statistics.median(times[(n, path)]) * 1000, 1)
        for n in args.sizes:
            row[f"ratio {n:,}"] = round(statistics.median(times[(n, path)]) / empty, 2)
        # on the empty database a sequential scan of a few rows is the right plan
        scans = {t for n in args.sizes for t in plans[n][path]["history_seq_scans"]}
        row["seq scans of history"] = ",".join(sorted(scans)) or "none"
        page_rows.append(row)
    print_table("Pages (median of rounds × 3 requests, ms)", page_rows)

    hot_rows = []
    for n in sizes:
        pub = summarize_latencies(publish[n])
        ing = summarize_latencies(ingest[n])
        hot_rows.append(
            {
                "size": n,
                "publish p50 ms": pub["p50_ms"],
                "publish p99 ms": pub["p99_ms"],
                "claim deliveries/s": round(statistics.median(claims[n]), 1),
                "ingest batch p50 ms": ing["p50_ms"],
                "ingest batch p99 ms": ing["p99_ms"],
                "ingest events/s": round(statistics.median(ingest_rate[n]), 0),
            }
        )
    empty_row = hot_rows[0]
    for row in hot_rows[1:]:
        row["publish p99 ratio"] = round(row["publish p99 ms"] / empty_row["publish p99 ms"], 2)
        row["claim ratio"] = round(row["claim deliveries/s"] / empty_row["claim deliveries/s"], 2)
        row["ingest ratio"] = round(row["ingest events/s"] / empty_row["ingest events/s"], 2)
    print_table("Hot paths", hot_rows)
    if prune:
        print_table("Prune while delivering (1M database, events older than 14 days)", [prune])

    largest = max(args.sizes)
    print(f"\nSlowest query of each page at {largest:,} rows, EXPLAIN (ANALYZE, BUFFERS):")
    for path in PAGES:
        info = plans[largest][path]
        print(f"\n--- {path} ({info['queries']} queries)\n{info['slowest_sql'][:300]}")
        print(info["slowest_plan"])

    write_report(
        "history",
        {
            "sizes": sizes,
            "rounds": args.rounds,
            "fill_seconds": fills,
            "floors": FLOORS,
            "pages": page_rows,
            "hot_paths": hot_rows,
            "prune": prune,
            "plans": {str(n): plans[n] for n in sizes},
            "load_average": os.getloadavg(),
        },
    )


if __name__ == "__main__":
    main()
