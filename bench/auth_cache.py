"""Authenticated requests per second with the API-key cache on and off, in one run.

Runs the real Django request stack in-process (middleware, DRF, auth, throttles off) against
a throwaway database on the configured PostgreSQL, and counts database queries per 1,000
requests in each mode. Usage: .venv/bin/python bench/auth_cache.py [--requests N]
"""

from __future__ import annotations

import argparse
import time

from _common import print_table, setup_django, teardown_django, write_report


def run(requests: int):
    from django.core.cache import cache
    from django.db import connection, transaction
    from django.test import Client, override_settings
    from django.test.utils import CaptureQueriesContext

    from tenants import keycache
    from tenants.services import apikey_create, tenant_create

    with transaction.atomic():
        tenant = tenant_create(name="bench")
        _key, raw = apikey_create(tenant=tenant, kind="secret")
    client = Client(HTTP_AUTHORIZATION=f"Bearer {raw}")
    # A cheap authenticated endpoint: the tenant's key list (one small query of its own).
    url = "/api/keys"

    rows = []
    for mode, enabled in (("cache off", False), ("cache on", True)):
        with override_settings(API_KEY_CACHE_ENABLED=enabled):
            cache.clear()
            for _ in range(50):  # warm-up
                client.get(url)
            with CaptureQueriesContext(connection) as queries:
                started = time.perf_counter()
                for _ in range(requests):
                    response = client.get(url)
                    assert response.status_code == 200, response.content
                elapsed = time.perf_counter() - started
        auth_queries = [q for q in queries.captured_queries if '"key_hash" =' in q["sql"]]
        hits, misses = keycache.stats.hits, keycache.stats.misses
        keycache.stats.reset()
        rows.append(
            {
                "mode": mode,
                "requests": requests,
                "req_per_s": round(requests / elapsed, 1),
                "db_queries_per_1000": round(len(queries.captured_queries) * 1000 / requests, 1),
                "auth_queries_per_1000": round(len(auth_queries) * 1000 / requests, 1),
                "cache_hits": hits,
                "cache_misses": misses,
            }
        )
    rows[1]["speedup"] = round(rows[1]["req_per_s"] / rows[0]["req_per_s"], 2)
    rows[0]["speedup"] = 1.0
    return rows


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=3000)
    args = parser.parse_args()
    old_name = setup_django("auth")
    try:
        rows = run(args.requests)
    finally:
        teardown_django()
    print_table("API-key verification cache (in-process Django stack)", rows)
    write_report("auth_cache", {"rows": rows})
    _ = old_name


if __name__ == "__main__":
    main()
