"""`make run`'s command as a real process: serves the demo, the inspector, the admin and the
docs; a submitted assessment reaches the inspector, verified; the banner comes last; SIGINT
stops everything within 5 s."""

import json
import signal
import socket
import time
import uuid

import pytest
import requests

from tests.processes import manage_popen

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for(url: str, timeout: float = 90) -> requests.Response:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return requests.get(url, timeout=2)
        except requests.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def _submit_demo_assessment(base: str, secret_key: str) -> str:
    """A submission through the API (the demo page does the same with its publishable key)."""
    session_id = str(uuid.uuid4())
    submitted = requests.post(
        f"{base}/api/assessments/submit",
        json={"submissionId": str(uuid.uuid4()), "sessionId": session_id, "answers": {"a": 1}},
        headers={"Authorization": f"Bearer {secret_key}"},
        timeout=10,
    )
    assert submitted.status_code == 201, submitted.text
    return session_id


def test_make_run_first_hour_and_a_clean_stop(tmp_path):
    port, realtime_port = _free_port(), _free_port()
    base = f"http://127.0.0.1:{port}"
    proc = manage_popen(
        "atlas_run",
        "--port",
        str(port),
        ATLAS_VAR_DIR=str(tmp_path),
        ATLAS_BASE_URL=base,
        OUTBOX_REALTIME_PORT=str(realtime_port),
    )
    try:
        login = _wait_for(f"{base}/admin/login/")
        assert login.status_code == 200 and "Atlas operations console" in login.text
        assert requests.get(f"{base}/api/docs/", timeout=5).status_code == 200
        assert requests.get(f"{base}/demo/inbox", timeout=5).status_code == 200
        creds = json.loads((tmp_path / "demo-credentials.json").read_text())

        session_id = _submit_demo_assessment(base, creds["secret_key"])
        deadline, arrived = time.monotonic() + 30, []
        while not arrived and time.monotonic() < deadline:
            listed = requests.get(f"{base}/demo/inbox/deliveries", timeout=5).json()
            arrived = [d for d in listed["deliveries"] if session_id in d["body"]]
            time.sleep(0.3)
        assert arrived, "the submission never reached the inspector"
        assert arrived[0]["verified"] is True and arrived[0]["eventType"] == "assessment.submitted"
    finally:
        asked = time.monotonic()
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
        stopped_in = time.monotonic() - asked
    assert proc.returncode == 0, output
    assert stopped_in < 5, (stopped_in, output[-2000:])
    assert "all stopped" in output
    # child output is prefixed with its process, and quiet: no line per request
    assert "     web │ " in output and "  worker │ " in output
    assert '"GET /demo/inbox/deliveries' not in output and "GET /admin/login/" not in output
    # the banner comes after the processes started, and names the inspector and realtime
    assert output.index("starting web") < output.index("Atlas is running")
    banner = output[output.index("Atlas is running") :]
    assert f"{base}/demo/inbox" in banner and f":{realtime_port}/api/realtime/stream" in banner
    assert creds["secret_key"] in banner
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{base}/admin/login/", timeout=2)
