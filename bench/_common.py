"""Shared plumbing for the benchmark scripts: a throwaway database, tables and JSON reports.

Each script measures a ratio against a baseline run in the same process run (machines are
noisy), prints a table and writes bench/results/<name>.json.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def setup_django(database_suffix: str = "bench"):
    """Django on a dedicated database (<name>_<suffix>), migrated, so benches never touch
    development data. Returns the database settings dict."""
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ.setdefault("THROTTLE_ENABLED", "false")
    import django
    from django.conf import settings

    django.setup()
    import logging

    logging.getLogger("django.request").setLevel(logging.ERROR)  # no line per 4xx
    from django.db import connection
    from django.test.utils import setup_test_environment

    setup_test_environment()
    settings.DEBUG = False
    name = f"{connection.settings_dict['NAME']}_{database_suffix}"
    connection.creation.create_test_db(verbosity=0, autoclobber=True, keepdb=False)
    # create_test_db names it test_<name>; remember it for child processes
    os.environ["ATLAS_BENCH_DB"] = connection.settings_dict["NAME"]
    return name


def teardown_django(old_name: str | None = None):
    from django.db import connection

    try:
        connection.creation.destroy_test_db(
            old_name or connection.settings_dict["NAME"], verbosity=0
        )
    except Exception as exc:  # a leftover bench database is harmless
        print(f"(could not drop bench database: {exc})")


def percentile(values, pct: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[index]


def summarize_latencies(seconds: list[float]) -> dict:
    ms = [s * 1000 for s in seconds]
    return {
        "count": len(ms),
        "p50_ms": round(percentile(ms, 50), 3),
        "p95_ms": round(percentile(ms, 95), 3),
        "p99_ms": round(percentile(ms, 99), 3),
        "mean_ms": round(statistics.fmean(ms), 3) if ms else None,
    }


def print_table(title: str, rows: list[dict]):
    if not rows:
        print(f"{title}: no rows")
        return
    columns = list(rows[0])
    widths = {c: max(len(str(c)), *(len(_fmt(r.get(c))) for r in rows)) for c in columns}
    print(f"\n{title}")
    print("  ".join(str(c).ljust(widths[c]) for c in columns))
    print("  ".join("-" * widths[c] for c in columns))
    for row in rows:
        print("  ".join(_fmt(row.get(c)).ljust(widths[c]) for c in columns))


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def write_report(name: str, data: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {
        "benchmark": name,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        **data,
    }
    path.write_text(json.dumps(payload, indent=2, default=str))
    print(f"\nreport written to {path.relative_to(ROOT)}")
    return path
