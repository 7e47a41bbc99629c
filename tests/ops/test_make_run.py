"""`make run`'s command as a real process: serves the admin and the docs; SIGINT stops all."""

import signal
import socket
import time

import pytest
import requests

from tests.processes import manage_popen

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for(url: str, timeout: float = 60) -> requests.Response:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return requests.get(url, timeout=2)
        except requests.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def test_run_serves_admin_and_docs_and_stops_cleanly_on_sigint(tmp_path):
    port = _free_port()
    proc = manage_popen(
        "atlas_run",
        "--port",
        str(port),
        ATLAS_VAR_DIR=str(tmp_path),
        ATLAS_BASE_URL=f"http://127.0.0.1:{port}",
    )
    try:
        login = _wait_for(f"http://127.0.0.1:{port}/admin/login/")
        assert login.status_code == 200 and "Django" in login.text
        assert requests.get(f"http://127.0.0.1:{port}/api/docs/", timeout=5).status_code == 200
        assert (tmp_path / "demo-credentials.json").exists()
    finally:
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output
    assert "secret key" in output and "all stopped" in output
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/admin/login/", timeout=2)
