"""tus under the production web server (gunicorn): a chunked PATCH body (no Content-Length,
as some clients stream) is decoded by gunicorn and streamed to staging like any other."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest
import requests

from tests.factories import make_api_key
from tests.processes import ROOT, subprocess_env
from uploads.models import Attachment

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def gunicorn_url(settings, upload_dirs):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = subprocess_env(
        THROTTLE_ENABLED="false",
        UPLOADS_STAGING_DIR=str(settings.UPLOADS_STAGING_DIR),
        UPLOADS_STORAGE_DIR=str(settings.UPLOADS_STORAGE_DIR),
        UPLOADS_STORAGE_BACKEND="tests.uploads.storage.FlakyStorage",
        DB_CONN_MAX_AGE="0",
    )
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "config.wsgi", "-b", f"127.0.0.1:{port}", "-w", "1"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(f"{url}/health", timeout=1)
                break
            except requests.RequestException:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError(server.stderr.read().decode()[-2000:]) from None
                time.sleep(0.2)
        yield url
    finally:
        server.terminate()
        server.wait(10)


def test_chunked_patch_body_is_streamed_and_stored(gunicorn_url, tenant, storage_switch):
    headers = {
        "Authorization": f"Bearer {make_api_key(tenant, 'secret')}",
        "Tus-Resumable": "1.0.0",
    }
    data = b"streamed without a length " * 20_000  # ~520 KB
    created = requests.post(
        f"{gunicorn_url}/api/uploads/tus/", headers={**headers, "Upload-Length": str(len(data))}
    )
    assert created.status_code == 201, created.text

    def body():  # a generator: requests sends Transfer-Encoding: chunked
        for start in range(0, len(data), 100_000):
            yield data[start : start + 100_000]

    response = requests.patch(
        created.headers["Location"],
        data=body(),
        headers={
            **headers,
            "Upload-Offset": "0",
            "Content-Type": "application/offset+octet-stream",
        },  # fmt: skip
    )
    assert response.status_code == 204, response.text
    assert response.headers["Upload-Offset"] == str(len(data))
    attachment = Attachment.objects.get()
    assert attachment.status == "stored"
    assert [p.read_bytes() for p in storage_switch.files()] == [data]
