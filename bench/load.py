"""Load test: the browser's traffic mix at rising concurrency against gunicorn (2 workers).

Each virtual user runs the browser's flow in a closed loop (no think time, so N users = N
requests in flight): session upsert (started), 4 answers, one batch of 10 analytics events,
submit; then starts over with a new session. Publishable key with an allowed Origin, as the
browser client sends. Every step is bounded in time (--seconds) and in requests (--max-requests).

Prints requests/s and p50/p95/p99 per endpoint per step, and the concurrency at which p99
(all requests of the step) first exceeds 200 ms. Writes bench/results/load.json.

Usage: .venv/bin/python bench/load.py [--steps 5,10,20,40,80] [--seconds 15]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path

from _common import (
    ROOT,
    atlas_env,
    free_port,
    gunicorn_command,
    percentile,
    print_table,
    setup_django,
    spawn,
    stop_process,
    summarize_latencies,
    teardown_django,
    wait_http,
    write_report,
)

SLO_MS = 200.0
ORIGIN = "http://127.0.0.1:8000"
ENDPOINTS = ("session", "answers", "events", "submit")


async def user(session, base: str, headers: dict, stats: dict, stop_at: float, budget: list):
    """One browser: the flow, again and again, until the step's time or request budget ends."""
    import aiohttp

    token: dict = {}  # the session's X-Session-Token, from the 201 that created it

    async def post(endpoint: str, path: str, body: dict) -> bool:
        if time.monotonic() >= stop_at or budget[0] <= 0:
            return False
        budget[0] -= 1
        started = time.perf_counter()
        try:
            async with session.post(
                base + path, json=body, headers={**headers, **token}
            ) as response:
                answer = await response.read()
                ok = response.status < 400
                if endpoint == "session" and response.status == 201:
                    token["X-Session-Token"] = json.loads(answer)["sessionToken"]
        except (TimeoutError, aiohttp.ClientError):
            ok = False
        elapsed = time.perf_counter() - started
        stats[endpoint]["ok" if ok else "errors"].append(elapsed)
        return True

    while True:
        sid = str(uuid.uuid4())
        token.clear()
        if not await post(
            "session", "/api/assessments/session", {"sessionId": sid, "status": "started"}
        ):
            return
        answers = {}
        for q in range(4):
            answers[f"q{q}"] = q % 3
            body = {"questionId": f"q{q}", "answer": q % 3}
            if not await post("answers", f"/api/assessments/session/{sid}/answers", body):
                return
        events = [
            {
                "messageId": f"{sid}-{i}",
                "name": "question_viewed",
                "sessionId": sid,
                "properties": {"question": f"q{i % 4}", "ms": 900 + i},
                "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            for i in range(10)
        ]
        if not await post("events", "/api/assessments/events", {"events": events}):
            return
        submit = {
            "submissionId": str(uuid.uuid4()),
            "sessionId": sid,
            "answers": answers,
            "result": {"score": 7},
            "email": "load@example.com",
        }
        if not await post("submit", "/api/assessments/submit", submit):
            return


async def step(base: str, key: str, concurrency: int, seconds: float, max_requests: int) -> dict:
    import aiohttp

    stats = {e: {"ok": [], "errors": []} for e in ENDPOINTS}
    headers = {"Authorization": f"Bearer {key}", "Origin": ORIGIN}
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=30)
    budget = [max_requests]
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        started = time.monotonic()
        stop_at = started + seconds
        await asyncio.gather(
            *(user(session, base, headers, stats, stop_at, budget) for _ in range(concurrency))
        )
        elapsed = time.monotonic() - started
    return {"concurrency": concurrency, "seconds": elapsed, "stats": stats}


def summarize(result: dict) -> tuple[list[dict], dict]:
    rows, everything = [], []
    elapsed = result["seconds"]
    for endpoint in ENDPOINTS:
        ok, errors = result["stats"][endpoint]["ok"], result["stats"][endpoint]["errors"]
        everything += ok + errors
        s = summarize_latencies(ok + errors)
        rows.append(
            {
                "users": result["concurrency"],
                "endpoint": endpoint,
                "req_s": round((len(ok) + len(errors)) / elapsed, 1),
                "p50_ms": s["p50_ms"],
                "p95_ms": s["p95_ms"],
                "p99_ms": s["p99_ms"],
                "errors": len(errors),
            }
        )
    total = {
        "users": result["concurrency"],
        "endpoint": "ALL",
        "req_s": round(len(everything) / elapsed, 1),
        "p50_ms": round(percentile([x * 1000 for x in everything], 50), 3),
        "p95_ms": round(percentile([x * 1000 for x in everything], 95), 3),
        "p99_ms": round(percentile([x * 1000 for x in everything], 99), 3),
        "errors": sum(r["errors"] for r in rows),
    }
    return rows, total


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", default="5,10,20,40,80", help="concurrent users per step")
    parser.add_argument("--seconds", type=float, default=15, help="per step")
    parser.add_argument("--max-requests", type=int, default=50_000, help="per step")
    parser.add_argument("--threads", type=int, default=4, help="gunicorn threads per worker")
    args = parser.parse_args()

    setup_django("load")
    try:
        report = run(args)
    finally:
        teardown_django()
    write_report("load", report)


def run(args) -> dict:
    from django.conf import settings
    from django.db import connection, transaction

    from assessments import models
    from tenants.services import apikey_create, tenant_create

    sys.path.insert(0, str(ROOT))
    from tests.processes import test_database_url

    with transaction.atomic():
        tenant = tenant_create(name="load")
        _key, raw_key = apikey_create(tenant=tenant, kind="publishable", allowed_origins=[ORIGIN])
    connection.close()

    load_before = os.getloadavg()
    folder = Path(tempfile.mkdtemp(prefix="atlas-load-"))
    print(f"starting gunicorn (2 workers x {args.threads} threads) …", flush=True)
    port = free_port()
    env = atlas_env(test_database_url(), folder, SECRET_KEY=settings.SECRET_KEY)
    server = spawn("web", gunicorn_command(port, threads=args.threads), env, folder / "logs")
    base = f"http://127.0.0.1:{port}"
    wait_http(f"{base}/health", 90, server)
    steps = [int(s) for s in args.steps.split(",") if s]
    rows, totals, crossed = [], [], None
    try:
        print("warm-up (5 users, 3 s) …", flush=True)
        asyncio.run(step(base, raw_key, 5, 3, args.max_requests))
        for concurrency in steps:
            print(f"step: {concurrency} users for {args.seconds:g} s …", flush=True)
            result = asyncio.run(step(base, raw_key, concurrency, args.seconds, args.max_requests))
            step_rows, total = summarize(result)
            rows += step_rows + [total]
            totals.append(total)
            if crossed is None and total["p99_ms"] > SLO_MS:
                crossed = concurrency
    finally:
        stop_process(server, 30)
        shutil.rmtree(folder, ignore_errors=True)
    load_after = os.getloadavg()

    print_table("Browser traffic mix, gunicorn 2 workers on 127.0.0.1 (closed loop)", rows)
    print(
        "\np99 (all requests) first above 200 ms at: "
        + (f"{crossed} concurrent users" if crossed else f"not reached up to {steps[-1]} users")
    )
    print(
        f"machine: {os.cpu_count()} cores; load average (1 min) before {load_before[0]:.2f}, "
        f"after {load_after[0]:.2f}; load generator on the same machine"
    )
    counts = {
        "sessions": models.AssessmentSession.objects.filter(tenant=tenant).count(),
        "submissions": models.Submission.objects.filter(tenant=tenant).count(),
        "events": models.AnalyticsEvent.objects.filter(tenant=tenant).count(),
    }
    print("rows written:", counts)
    by_step = defaultdict(dict)
    for row in rows:
        by_step[row["users"]][row["endpoint"]] = row
    return {
        "rows": rows,
        "steps": by_step,
        "p99_over_200ms_at_users": crossed,
        "seconds_per_step": args.seconds,
        "gunicorn": {"workers": 2, "threads": args.threads},
        "rows_written": counts,
        "load_average_before": load_before,
        "load_average_after": load_after,
        "note": "closed loop, no think time; generator and server share the 2 cores",
    }


if __name__ == "__main__":
    main()
