"""Access logs written by the project never contain query strings (a key, a token or personal
data may ride in one): runserver (`make run`), uvicorn (the realtime server) and gunicorn (the
production command, through gunicorn.conf.py), each as a real process."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import time

import pytest
import requests

from core.logging import PathOnlyAccessFilter
from tests.processes import ROOT, subprocess_env

SECRET = "sk_live_in_the_url_0123456789"
TOKEN = "visitor-token-in-the-url"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve_and_log(command: list[str], port: int) -> str:
    """Start the server, make requests with query strings, stop it; its whole output."""
    server = subprocess.Popen(
        command,
        cwd=ROOT,
        env=subprocess_env(THROTTLE_ENABLED="false", LOG_LEVEL="INFO"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 40
        while True:
            try:
                requests.get(f"{base}/health", timeout=2)
                break
            except requests.RequestException:
                if time.monotonic() > deadline or server.poll() is not None:
                    pytest.fail(f"server did not start: {server.communicate(timeout=5)[0][-2000:]}")
                time.sleep(0.3)
        refused = requests.post(
            f"{base}/api/assessments/events?key={SECRET}&t={TOKEN}", data="{}", timeout=10
        )
        assert refused.status_code == 400 and "secret_key_in_url" in refused.text
        requests.get(f"{base}/health?email=ada%40example.com&t={TOKEN}", timeout=10)
        time.sleep(0.5)  # let the access lines reach the pipe
    finally:
        server.terminate()
        try:
            output = server.communicate(timeout=20)[0]
        except subprocess.TimeoutExpired:
            server.kill()
            output = server.communicate()[0]
    return output


def _assert_path_only(output: str, request_line: str) -> None:
    assert request_line in output, output[-3000:]
    for leaked in (SECRET, TOKEN, "ada%40example.com", "?key=", "?email="):
        assert leaked not in output, (leaked, output[-3000:])


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_runserver_access_lines_have_no_query_string():
    port = _free_port()
    command = [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"]
    _assert_path_only(_serve_and_log(command, port), '"POST /api/assessments/events HTTP/1.1" 400')


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_uvicorn_access_lines_have_no_query_string():
    port = _free_port()
    command = [sys.executable, "-m", "uvicorn", "config.asgi:application", "--port", str(port)]
    _assert_path_only(_serve_and_log(command, port), '"POST /api/assessments/events HTTP/1.1" 400')


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_gunicorn_access_lines_have_no_query_string():
    port = _free_port()
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "config.wsgi",
        f"--bind=127.0.0.1:{port}",
        "--workers=1",
        "--access-logfile=-",
    ]
    _assert_path_only(_serve_and_log(command, port), '"POST /api/assessments/events HTTP/1.1" 400')


# --- the filter itself (no process) ---------------------------------------------------------


@pytest.mark.parametrize("name", ["django.server", "uvicorn.access"])
def test_the_access_loggers_carry_the_path_only_filter(name):
    assert any(isinstance(f, PathOnlyAccessFilter) for f in logging.getLogger(name).filters)


@pytest.mark.parametrize(
    ("name", "message", "args", "expected"),
    [
        (
            "django.server",
            '"%s" %s %s',
            (f"GET /api/x?key={SECRET} HTTP/1.1", "400", "12"),
            '"GET /api/x HTTP/1.1" 400 12',
        ),
        (
            "django.server",
            "code %d, message %s",
            (400, "Bad request"),
            "code 400, message Bad request",
        ),
        (
            "uvicorn.access",
            '%s - "%s %s HTTP/%s" %d',
            ("1.2.3.4:5", "GET", f"/api/realtime/stream?token={TOKEN}", "1.1", 200),
            '1.2.3.4:5 - "GET /api/realtime/stream HTTP/1.1" 200',
        ),
        ("outbox", "sent %s", (f"/x?t={TOKEN}",), f"sent /x?t={TOKEN}"),  # not an access log
    ],
)
def test_the_filter_drops_the_query_string(name, message, args, expected):
    record = logging.LogRecord(name, logging.INFO, __file__, 1, message, args, None)
    assert PathOnlyAccessFilter().filter(record) is True
    assert record.getMessage() == expected
