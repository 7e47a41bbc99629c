"""manage.py atlas_status: exit 0 healthy, 1 degraded, 2 down — with real processes.

The healthy case needs what production needs: a live `outbox_worker` and a django-q2
`qcluster`, both started here as real processes against the test database.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from django.core.management import call_command
from django.utils import timezone
from django_q.models import Schedule

from ops.status import status_report
from outbox.models import Target, WorkerHeartbeat
from tests.outbox.factories import make_target
from tests.processes import ROOT, manage_popen, subprocess_env
from tests.uploads.factories import staged_attachment


def atlas_status(*args, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "atlas_status", *args],
        cwd=ROOT,
        env=subprocess_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def start_cluster() -> subprocess.Popen:
    """qcluster in its own session: its sentinel and workers are children that outlive a
    signal to the main process alone, so the test stops the whole group it started."""
    return subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "qcluster"],
        cwd=ROOT,
        env=subprocess_env(Q_WORKERS="1"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def signal_group(proc: subprocess.Popen, sig) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def call_status(*args) -> tuple[int, str]:
    out = io.StringIO()
    with pytest.raises(SystemExit) as exit_info:
        call_command("atlas_status", *args, stdout=out)
    return exit_info.value.code, out.getvalue()


def wait_until(predicate, timeout=40.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def processes_level() -> str:
    return next(f.level for f in status_report(cluster_wait=0) if f.name == "processes")


def test_exit_2_when_the_database_is_unreachable(db):
    result = atlas_status(DATABASE_URL="postgres://nobody@127.0.0.1:1/none", DB_CONNECT_TIMEOUT="2")
    assert result.returncode == 2, result.stderr
    assert "[DOWN] database" in result.stdout and "status: down (exit 2)" in result.stdout


def test_exit_2_when_no_process_delivers(db):
    code, out = call_status("--cluster-wait", "0")
    assert code == 2
    assert "[DOWN] processes" in out and "nothing delivers" in out


def test_json_output_names_every_check(db, tenant):
    staged_attachment(tenant, status="failed", next_retry_at=None)
    code, out = call_status("--json", "--cluster-wait", "0")
    body = json.loads(out)
    assert code == 2 and body["status"] == "down"
    assert set(body["checks"]) == {
        "database",
        "processes",
        "outbox lag",
        "outbox dead",
        "failing targets",
        "uploads",
        "payments",
    }
    assert body["checks"]["uploads"]["level"] == "degraded"
    assert "1 failed in the last 24 h" in body["checks"]["uploads"]["summary"]


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_exit_codes_follow_the_real_processes(tenant, client):
    Schedule.objects.all().delete()  # the cluster must run nothing against the test rows
    worker = manage_popen("outbox_worker", "--poll", "60")
    cluster = start_cluster()
    try:
        assert wait_until(lambda: processes_level() == "ok"), (
            list(WorkerHeartbeat.objects.values()),
            cluster.poll(),
        )
        healthy = atlas_status()
        assert healthy.returncode == 0, healthy.stdout
        assert "status: ok (exit 0)" in healthy.stdout
        health = client.get("/health").json()
        assert health["checks"]["outbox_worker"]["ok"] is True
        # /health does not wait for the cluster's stat (3 s TTL): it may take a few reads
        assert wait_until(
            lambda: client.get("/health").json()["checks"]["django_q_cluster"]["ok"], timeout=10
        )

        # trouble that a human must look at: degraded, not down
        target = make_target(tenant, name="hook")
        Target.objects.filter(pk=target.pk).update(
            circuit_state="open", circuit_opened_at=timezone.now()
        )
        degraded = atlas_status()
        assert degraded.returncode == 1, degraded.stdout
        assert (
            "[WARN] failing targets" in degraded.stdout
            and "Acme/hook: circuit open" in degraded.stdout
        )
        Target.objects.filter(pk=target.pk).update(circuit_state="closed")
        assert atlas_status().returncode == 0

        # the outbox worker stops: the cluster's sweep still delivers, so degraded
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
        no_worker = atlas_status()
        assert no_worker.returncode == 1 and "no live outbox worker" in no_worker.stdout
        response = client.get("/health")
        # not critical for /health (events wait safely in PostgreSQL): 200, reported as not ok
        assert response.status_code == 200
        assert response.json()["checks"]["outbox_worker"] == {
            "ok": False,
            "critical": False,
            "workers": 0,
        }

        # and the cluster dies too (its whole process group): nothing delivers any more
        signal_group(cluster, signal.SIGKILL)
        cluster.wait(timeout=30)
        assert wait_until(lambda: processes_level() == "down", timeout=15)
        down = atlas_status("--cluster-wait", "1")
        assert down.returncode == 2 and "[DOWN] processes" in down.stdout
    finally:
        if worker.poll() is None:
            worker.kill()
        worker.wait(timeout=10)
        signal_group(cluster, signal.SIGKILL)
        cluster.wait(timeout=10)
