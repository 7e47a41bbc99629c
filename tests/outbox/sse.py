"""A real uvicorn process serving the ASGI app, and a real SSE client for it.

    from tests.outbox.sse import Stream, asgi_server

`asgi_server(**env)` is a context manager yielding the base URL; the child process shares the
test database and cache (tests.processes.subprocess_env).
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time

import requests

from tests.outbox.helpers import free_port
from tests.processes import ROOT, subprocess_env


@contextlib.contextmanager
def asgi_server(**env: str):
    port = free_port()
    child_env = subprocess_env(**env)
    # as in production: browser tests set this in the test process; the server must not inherit
    # it, or Django would let synchronous ORM calls run on the event loop
    child_env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "config.asgi:application",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env=child_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            time.sleep(0.1)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Stream:
    """A real SSE client: reads frames until it has `count` events, the stream ends, or the
    read times out (`read_timeout` s without a byte)."""

    def __init__(
        self, url, key, last_event_id=None, params=None, read_timeout=10, token=None, origin=None
    ):
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        if origin is not None:
            headers["Origin"] = origin
        if token is not None:  # a browser's way in: ?token=rt_…
            params = {**(params or {}), "token": token}
        self.response = requests.get(
            f"{url}/api/realtime/stream",
            headers=headers,
            params=params,
            stream=True,
            timeout=(5, read_timeout),
        )
        self.lines = self.response.iter_lines(decode_unicode=True)
        self.connected = False
        self.ended = False  # the server closed the stream
        self.comments: list[str] = []
        self.signals: list[tuple[str, dict]] = []  # frames without an id: (event, data)
        self.event_names: list[str | None] = []  # each event frame's `event:` (None: none)

    def wait_connected(self):
        for line in self.lines:
            if line == ": connected":
                self.connected = True
                return

    def take(self, count, within: float | None = None) -> list[dict]:
        """Up to `count` events; each is the JSON data plus `lastEventId` (the frame's id).
        With `within`, stops reading after that many seconds (keep-alives included)."""
        events: list[dict] = []
        frame: dict[str, str] = {}
        deadline = None if within is None else time.monotonic() + within
        try:
            for line in self.lines:
                if deadline is not None and time.monotonic() > deadline:
                    return events
                if line == "":
                    if "data" in frame and "id" not in frame:
                        self.signals.append((frame.get("event", ""), json.loads(frame["data"])))
                    elif "data" in frame:
                        events.append({**json.loads(frame["data"]), "lastEventId": frame["id"]})
                        self.event_names.append(frame.get("event"))
                        if len(events) == count:
                            return events
                    frame = {}
                elif line.startswith(":"):
                    self.comments.append(line)
                else:
                    name, _, value = line.partition(": ")
                    frame[name] = value
            self.ended = True
        except requests.exceptions.ConnectionError:  # read timeout: still open, silent
            pass
        return events

    def close(self):
        self.response.close()
