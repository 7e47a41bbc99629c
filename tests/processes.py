"""Run real processes (workers, clients) against the test database.

`subprocess_env()` gives a child process the DATABASE_URL of the *test* database and the same
shared cache, so a child sees what the test committed (use `transaction=True` tests).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

from django.conf import settings
from django.db import connection

ROOT = Path(__file__).resolve().parent.parent


def test_database_url() -> str:
    db = connection.settings_dict
    user = quote(db.get("USER") or "")
    password = f":{quote(db['PASSWORD'])}" if db.get("PASSWORD") else ""
    host = db.get("HOST") or ""
    port = f":{db['PORT']}" if db.get("PORT") else ""
    if host.startswith("/"):  # Unix socket (the embedded server)
        return f"postgres://{user}{password}@/{db['NAME']}?host={host}"
    return f"postgres://{user}{password}@{host}{port}/{db['NAME']}"


def subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["DATABASE_URL"] = test_database_url()
    env["DJANGO_SETTINGS_MODULE"] = "config.settings"
    env["SECRET_KEY"] = settings.SECRET_KEY
    location = settings.CACHES["default"].get("LOCATION")
    if location and settings.CACHES["default"]["BACKEND"].endswith("FileBasedCache"):
        env["CACHE_DIR"] = str(location)
    env.update(extra)
    return env


def run_django_snippet(code: str, timeout: float = 60, **extra_env) -> subprocess.CompletedProcess:
    """Run Python `code` in a fresh interpreter with Django set up on the test database."""
    prelude = "import django; django.setup()\n"
    return subprocess.run(
        [sys.executable, "-c", prelude + code],
        cwd=ROOT,
        env=subprocess_env(**extra_env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def manage_popen(*args: str, **extra_env) -> subprocess.Popen:
    """Start `manage.py <args>` as a real long-running process (e.g. a worker)."""
    return subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), *args],
        cwd=ROOT,
        env=subprocess_env(**extra_env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
