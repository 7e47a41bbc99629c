"""The bounded soaks inside `make test`: real processes, a real PostgreSQL (each soak starts its
own embedded server in a temporary folder so it may restart it), real HTTP on 127.0.0.1.

`make soak` runs the full versions (20,000 events, three worker kills, a 60 s receiver outage).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
pytestmark = pytest.mark.slow


def _run(script: str, *args: str, timeout: float) -> tuple[subprocess.CompletedProcess, dict]:
    report = f"test_{Path(script).stem}_{os.getpid()}"
    env = dict(os.environ)
    env.pop("DATABASE_URL", None)  # the soak uses its own server, never the test database
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), "--quick", f"--report={report}", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    path = ROOT / "bench" / "results" / f"{report}.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    path.unlink(missing_ok=True)
    return result, data


def test_outbox_soak_loses_nothing_through_kill_restart_and_outage():
    # ~400 events at 25/s: one worker SIGKILLed mid-batch, PostgreSQL restarted, the receiver
    # down for 3 s, a receiver failing 13% of requests at random
    result, report = _run(
        "soak.py",
        "--events=400",
        "--faults=kill@0.2,pg@0.5:2,receiver@0.75:3",
        "--drain-timeout=90",
        "--max-minutes=4",
        timeout=300,
    )
    output = result.stdout[-6000:] + result.stderr[-3000:]
    assert result.returncode == 0, output
    assert report["lost"] == 0, output
    assert report["published"] == 400, output
    assert report["delivered"] == 400, output
    kinds = [fault["kind"] for fault in report["faults"]]
    assert sorted(kinds) == ["kill", "pg", "receiver"], output
    assert all("error" not in fault for fault in report["faults"]), output


def test_submissions_soak_keeps_one_submission_per_id_through_network_faults():
    result, report = _run("soak_submit.py", "--submissions=150", "--clients=8", timeout=240)
    output = result.stdout[-6000:] + result.stderr[-3000:]
    assert result.returncode == 0, output
    assert report["submission_rows"] == 150, output
    assert report["outbox_events"] == 150, output
    assert not any(report["violations"].values()), output
    # the faults really happened: some commits lost their response and were replayed
    assert report["proxy_fates"].get("drop_response", 0) > 0, output
