"""Stripe webhook throughput: events processed per second (signature check included) and
latency percentiles at N concurrent senders, against a real gunicorn server.

Same-run baselines, so the ratios show where the time goes:
  1. signature verification alone (stripe SDK, in-process, one thread);
  2. full processing without HTTP (verify + store + state machine + outbox, in-process);
  3. the webhook over HTTP: gunicorn (2 sync workers) on 127.0.0.1, N concurrent senders;
  4. GET /health over the same HTTP path (transport + Django floor).

The event mix per payment: checkout.session.completed, charge.refunded (partial),
refund.created (the rest), plus ~10 % exact duplicates; half the refunds arrive before the
completion (deferred, then replayed). The run checks the end state of every payment.

Usage: .venv/bin/python bench/payments.py [--payments 400] [--senders 20] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

from _common import (
    ROOT,
    database_url,
    free_port,
    print_table,
    setup_django,
    summarize_latencies,
    teardown_django,
    write_report,
)

SECRET = "whsec_bench_secret"
os.environ["TEST_DATABASE_NAME"] = "bench_atlas_payments"
os.environ["STRIPE_WEBHOOK_SECRET"] = SECRET
os.environ["LOG_LEVEL"] = "WARNING"


def _make_payments(n: int, prefix: str):
    from django.db import transaction

    from payments.models import PaymentSession
    from tenants.models import Tenant

    tenant, _ = Tenant.objects.get_or_create(name="bench-payments")
    with transaction.atomic():
        rows = PaymentSession.objects.bulk_create(
            [
                PaymentSession(
                    tenant=tenant,
                    email=f"buyer{i}@example.com",
                    first_name="Bench",
                    amount=1900,
                    currency="eur",
                    stripe_checkout_session_id=f"cs_bench_{prefix}_{i:06d}",
                )
                for i in range(n)
            ]
        )
    return rows


def _events_for(rows, prefix: str, seed: int = 7) -> list[bytes]:
    """Three events per payment (+10 % duplicates), shuffled per payment so that some
    refunds arrive before their completion."""
    rng = random.Random(seed)
    now = int(time.time())
    bodies: list[bytes] = []
    for i, ps in enumerate(rows):
        pi = f"pi_{prefix}_{i:06d}"
        t0 = now - 60
        completed = {
            "id": f"evt_{prefix}_{i:06d}_c",
            "object": "event",
            "type": "checkout.session.completed",
            "created": t0,
            "livemode": False,
            "api_version": "2024-06-20",
            "data": {
                "object": {
                    "id": ps.stripe_checkout_session_id,
                    "object": "checkout.session",
                    "client_reference_id": str(ps.pk),
                    "metadata": {"payment_session_id": str(ps.pk), "tenant_id": str(ps.tenant_id)},
                    "payment_intent": pi,
                    "payment_status": "paid",
                    "status": "complete",
                    "amount_total": 1900,
                    "currency": "eur",
                }
            },
        }
        partial = {
            "id": f"evt_{prefix}_{i:06d}_r1",
            "object": "event",
            "type": "charge.refunded",
            "created": t0 + 5,
            "livemode": False,
            "data": {
                "object": {
                    "id": f"ch_{prefix}_{i}",
                    "object": "charge",
                    "amount": 1900,
                    "amount_refunded": 500,
                    "payment_intent": pi,
                    "refunds": {
                        "object": "list",
                        "data": [
                            {"id": f"re_{prefix}_{i}_a", "amount": 500, "status": "succeeded"}
                        ],
                    },
                }
            },
        }
        rest = {
            "id": f"evt_{prefix}_{i:06d}_r2",
            "object": "event",
            "type": "refund.created",
            "created": t0 + 10,
            "livemode": False,
            "data": {
                "object": {
                    "id": f"re_{prefix}_{i}_b",
                    "object": "refund",
                    "amount": 1400,
                    "payment_intent": pi,
                    "status": "succeeded",
                }
            },
        }
        group = [completed, partial, rest]
        if i % 2:
            rng.shuffle(group)
        if i % 10 == 0:
            group.append(group[0])  # an exact duplicate
        bodies.extend(json.dumps(e).encode() for e in group)
    return bodies


def _check_end_state(rows) -> dict:
    from payments.models import PaymentSession, StripeEvent

    ids = [r.pk for r in rows]
    states = PaymentSession.objects.filter(pk__in=ids).values_list("status", "amount_refunded")
    wrong = sum(1 for s in states if s != ("refunded", 1900))
    return {
        "wrong_end_states": wrong,
        "deferred_left": StripeEvent.objects.filter(
            payment_session_id__in=ids, status="deferred"
        ).count(),
        "failed": StripeEvent.objects.filter(status="failed").count(),
    }


def bench_signature(bodies: list[bytes]) -> dict:
    import stripe

    headers = [
        stripe.WebhookSignature.generate_signature_header(b.decode(), SECRET) for b in bodies
    ]
    started = time.perf_counter()
    for body, header in zip(bodies, headers, strict=True):
        stripe.WebhookSignature.verify_header(body, header, SECRET, 300)
    elapsed = time.perf_counter() - started
    return {
        "mode": "signature verification only (in-process, 1 thread)",
        "events": len(bodies),
        "events_per_s": round(len(bodies) / elapsed, 1),
        # per-call timings are too small to time one by one: the mean stands for every column
        **summarize_latencies([elapsed / len(bodies)] * len(bodies)),
    }


def bench_in_process(bodies: list[bytes]) -> dict:
    import stripe

    from payments.services.webhooks import stripe_webhook_receive

    latencies = []
    started = time.perf_counter()
    for body in bodies:
        header = stripe.WebhookSignature.generate_signature_header(body.decode(), SECRET)
        t = time.perf_counter()
        stripe_webhook_receive(body=body, signature=header)
        latencies.append(time.perf_counter() - t)
    elapsed = time.perf_counter() - started
    return {
        "mode": "verify + store + process, no HTTP (in-process, 1 thread)",
        "events": len(bodies),
        "events_per_s": round(len(bodies) / elapsed, 1),
        **summarize_latencies(latencies),
    }


def _start_gunicorn(workers: int) -> tuple[subprocess.Popen, str]:
    from django.conf import settings

    port = free_port()
    env = dict(os.environ)
    env.update(
        DATABASE_URL=database_url(),
        DJANGO_SETTINGS_MODULE="config.settings",
        SECRET_KEY=settings.SECRET_KEY,
        THROTTLE_ENABLED="false",
        DEBUG="false",
        STRIPE_WEBHOOK_SECRET=SECRET,
        LOG_LEVEL="WARNING",
    )
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "gunicorn"),
            "config.wsgi",
            "--workers",
            str(workers),
            "--bind",
            f"127.0.0.1:{port}",
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    import requests

    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            requests.get(f"{base}/health", timeout=1)
            return proc, base
        except requests.RequestException:
            time.sleep(0.2)
    proc.terminate()
    raise SystemExit(f"gunicorn did not start: {proc.stderr.read()[-2000:]}")


def _blast(base: str, items: list, senders: int, send) -> tuple[list[float], float, dict]:
    import requests

    queue = list(reversed(items))
    lock = threading.Lock()
    latencies: list[float] = []
    statuses: dict[int, int] = {}

    def worker():
        session = requests.Session()
        while True:
            with lock:
                if not queue:
                    return
                item = queue.pop()
            t = time.perf_counter()
            status = send(session, item)
            elapsed = time.perf_counter() - t
            with lock:
                latencies.append(elapsed)
                statuses[status] = statuses.get(status, 0) + 1

    threads = [threading.Thread(target=worker) for _ in range(senders)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, time.perf_counter() - started, statuses


def bench_http(base: str, bodies: list[bytes], senders: int, workers: int) -> dict:
    import stripe

    url = f"{base}/api/payments/stripe/webhook"

    def send(session, body):
        # signed at send time, as Stripe does: the timestamp is fresh
        header = stripe.WebhookSignature.generate_signature_header(body.decode(), SECRET)
        response = session.post(
            url,
            data=body,
            headers={"Stripe-Signature": header, "Content-Type": "application/json"},
            timeout=30,
        )
        return response.status_code

    latencies, elapsed, statuses = _blast(base, bodies, senders, send)
    return {
        "mode": f"webhook over HTTP (gunicorn {workers} workers, {senders} senders)",
        "events": len(bodies),
        "events_per_s": round(len(bodies) / elapsed, 1),
        **summarize_latencies(latencies),
        "statuses": statuses,
    }


def bench_health(base: str, n: int, senders: int, workers: int) -> dict:
    def send(session, _):
        return session.get(f"{base}/health", timeout=30).status_code

    latencies, elapsed, statuses = _blast(base, list(range(n)), senders, send)
    return {
        "mode": f"GET /health over HTTP (same server, {senders} senders)",
        "events": n,
        "events_per_s": round(n / elapsed, 1),
        **summarize_latencies(latencies),
        "statuses": statuses,
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--payments", type=int, default=400)
    parser.add_argument("--senders", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    setup_django("payments")
    server = None
    try:
        in_proc_rows = _make_payments(args.payments // 2, "inproc")
        in_proc_bodies = _events_for(in_proc_rows, "inproc")
        http_rows = _make_payments(args.payments, "http")
        http_bodies = _events_for(http_rows, "http")

        rows = [bench_signature(http_bodies)]
        rows.append(bench_in_process(in_proc_bodies))
        checks = {"in_process": _check_end_state(in_proc_rows)}
        server, base = _start_gunicorn(args.workers)
        bench_health(base, 100, args.senders, args.workers)  # warm-up: workers, connections
        rows.append(bench_http(base, http_bodies, args.senders, args.workers))
        rows.append(bench_health(base, len(http_bodies), args.senders, args.workers))
        checks["http"] = _check_end_state(http_rows)
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        from django.db import connections

        connections.close_all()
        teardown_django()

    baseline = rows[1]["events_per_s"]
    for row in rows:
        row["vs_in_process"] = round(row["events_per_s"] / baseline, 2)
    table = [{k: v for k, v in row.items() if k != "statuses"} for row in rows]
    print_table("Stripe webhook processing (events per second, latency)", table)
    print(f"\nHTTP statuses: webhook {rows[2]['statuses']}, health {rows[3]['statuses']}")
    print(f"end-state checks: {checks}")
    print(f"machine: {os.cpu_count()} CPUs, shared with other workloads during this run")
    ok = all(c["wrong_end_states"] == 0 and c["failed"] == 0 for c in checks.values())
    write_report(
        "payments",
        {
            "params": vars(args),
            "rows": rows,
            "checks": checks,
            "note": "2-core machine shared with other engineers' test runs; compare ratios, "
            "not absolute numbers",
        },
    )
    if not ok:
        raise SystemExit("end-state check failed")


if __name__ == "__main__":
    main()
