"""A real HTTP receiver on 127.0.0.1 for delivery tests (keep-alive, scripted answers)."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Received:
    headers: dict
    body: bytes
    at: float

    def json(self):
        return json.loads(self.body)


@dataclass
class Receiver:
    url: str = ""
    requests: list[Received] = field(default_factory=list)
    # answer(received, index) -> (status, headers, body); default 200
    answer: object = None
    delay: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ids(self) -> list[str]:
        return [r.headers["webhook-id"] for r in self.requests]

    def wait_for(self, count: int, timeout: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.requests) >= count:
                return True
            time.sleep(0.02)
        return False


def start_receiver(host: str = "127.0.0.1", port: int = 0) -> tuple[Receiver, ThreadingHTTPServer]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, like real receivers

        def do_POST(self):
            length = int(self.headers.get("content-length", 0))
            body = self.rfile.read(length)
            received = Received({k.lower(): v for k, v in self.headers.items()}, body, time.time())
            with state.lock:
                index = len(state.requests)
                state.requests.append(received)
            if state.delay:
                time.sleep(state.delay)
            status, headers, text = (
                state.answer(received, index) if state.answer else (200, {}, "ok")
            )
            payload = text.encode()
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    state.url = f"http://{host}:{server.server_address[1]}/hook"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return state, server
