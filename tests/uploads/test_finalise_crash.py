"""Nothing acknowledged is lost when the web process dies while finalising: a real gunicorn is
SIGKILLed after the last byte is durably staged and before the transaction that marks the
upload stored (before and after its bytes reach storage); the retry run then stores it, with
its real SHA-256 and one upload.stored event."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
import requests
import time_machine
from django.utils import timezone

from outbox.models import OutboxEvent
from tests.factories import make_api_key
from tests.processes import ROOT, subprocess_env
from uploads import staging
from uploads.models import Attachment
from uploads.services import retries

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_gunicorn(settings, pause_at: str, marker: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = subprocess_env(
        THROTTLE_ENABLED="false",
        UPLOADS_STAGING_DIR=str(settings.UPLOADS_STAGING_DIR),
        UPLOADS_STORAGE_DIR=str(settings.UPLOADS_STORAGE_DIR),
        UPLOADS_MAX_BYTES=str(settings.UPLOADS_MAX_BYTES),
        DB_CONN_MAX_AGE="0",
        ATLAS_TEST_PAUSE_FINALISING=f"{pause_at}:{marker}",
    )
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "config.wsgi",
            "-b",
            f"127.0.0.1:{port}",
            "-w",
            "1",
            "--timeout",
            "300",
        ],  # fmt: skip
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own group: the kill takes master and worker at once
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            requests.get(f"{url}/health", timeout=1)
            return server, url
        except requests.RequestException:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                raise RuntimeError(server.stderr.read().decode()[-2000:]) from None
            time.sleep(0.2)


@pytest.mark.parametrize(
    ("pause_at", "in_storage_before_retry"),
    [("staged", False), ("placed", True)],
    ids=["killed-before-storage", "killed-before-the-stored-commit"],
)
def test_killed_between_last_byte_and_stored_commit_the_retry_run_stores_it(
    settings, tenant, plain_storage, tmp_path, pause_at, in_storage_before_retry
):
    marker = tmp_path / "paused"
    server, url = _start_gunicorn(settings, pause_at, marker)
    headers = {"Authorization": f"Bearer {make_api_key(tenant, 'secret')}",
               "Tus-Resumable": "1.0.0"}  # fmt: skip
    data = os.urandom(700_000)
    try:
        created = requests.post(f"{url}/api/uploads/tus/",
                                headers={**headers, "Upload-Length": str(len(data))})  # fmt: skip
        assert created.status_code == 201, created.text
        location = created.headers["Location"]
        body = {"Content-Type": "application/offset+octet-stream"}
        first = requests.patch(location, data=data[:300_000],
                               headers={**headers, **body, "Upload-Offset": "0"})  # fmt: skip
        assert first.status_code == 204, first.text
        answers: list = []

        def last_patch():
            try:
                answers.append(requests.patch(location, data=data[300_000:], timeout=60, headers={
                    **headers, "Upload-Offset": "300000",
                    "Content-Type": "application/offset+octet-stream"}))  # fmt: skip
            except requests.RequestException as exc:
                answers.append(exc)

        sender = threading.Thread(target=last_patch)
        sender.start()
        deadline = time.monotonic() + 30
        while not marker.exists():
            assert time.monotonic() < deadline and not answers, f"no pause: {answers}"
            time.sleep(0.05)
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(10)
        sender.join(30)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(10)
    assert isinstance(answers[0], requests.RequestException)  # the client never got its 204

    attachment = Attachment.objects.get()
    # the bytes are acknowledged by the database: pending, with the real digest
    assert (attachment.status, attachment.upload_offset) == ("pending", len(data))
    assert attachment.sha256 == hashlib.sha256(data).hexdigest()
    assert attachment.claimed_by is not None  # the dead process's inline claim
    staged = staging.staging_path(tenant_id=tenant.pk, attachment_id=attachment.pk)
    assert staged.read_bytes() == data
    stored = [p for p in plain_storage.rglob("*") if p.is_file()]
    assert bool(stored) is in_storage_before_retry
    assert not OutboxEvent.objects.filter(event_type="upload.stored").exists()

    # a run right away leaves the claim alone; once its lease has run out, a run takes it
    assert retries.retry_run(source="scheduled").attempted == 0
    later = timezone.now() + timedelta(seconds=settings.UPLOADS_RETRY_LEASE_SECONDS + 1)
    with time_machine.travel(later, tick=False):
        log = retries.retry_run(source="scheduled")
    assert (log.attempted, log.succeeded) == (1, 1)
    attachment.refresh_from_db()
    assert attachment.status == "stored"
    assert attachment.sha256 == hashlib.sha256(data).hexdigest()
    stored = [p for p in plain_storage.rglob("*") if p.is_file()]
    assert [p.read_bytes() for p in stored] == [data], stored
    assert not staged.exists()
    events = OutboxEvent.objects.filter(event_type="upload.stored")
    assert [e.payload["sha256"] for e in events] == [attachment.sha256]
