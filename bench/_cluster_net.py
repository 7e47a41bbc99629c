"""Loopback plumbing of bench/cluster.py: a round-robin HTTP proxy in front of the hosts' web
processes, a receiver for the outbox targets, and a small client (all threads of the bench)."""

from __future__ import annotations

import http.client
import json
import threading
import time
import uuid
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from _common import free_port

HOSTS = ("a", "b")
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade"}


# --- the proxy and the receiver (threads of this process) -----------------------------------


class Proxy(ThreadingHTTPServer):
    """Round-robin HTTP/1.0 proxy: each request goes to the next live web process."""

    daemon_threads = True

    def __init__(self, backends: dict[str, int]):
        self.backends = backends
        self.turn = 0
        self.lock = threading.Lock()
        self.served: Counter = Counter()
        super().__init__(("127.0.0.1", free_port()), ProxyHandler)

    def order(self, pinned: str | None) -> list[str]:
        if pinned in self.backends:
            return [pinned]
        with self.lock:
            self.turn += 1
            first = self.turn % len(HOSTS)
        return [HOSTS[first], HOSTS[1 - first]]


class ProxyHandler(BaseHTTPRequestHandler):
    server: Proxy

    def _relay(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        headers["X-Forwarded-For"] = self.client_address[0]
        for host in self.server.order(self.headers.get("X-Cluster-Route")):
            conn = http.client.HTTPConnection("127.0.0.1", self.server.backends[host], timeout=60)
            try:
                conn.connect()
            except OSError:  # that host is down: the next one (a balancer's health check)
                continue
            try:
                conn.request(self.command, self.path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
            except OSError:  # the host died mid-request: the client sees the cut
                self.send_error(502, "upstream cut")
                return
            finally:
                conn.close()
            self.server.served[host] += 1
            self.send_response(response.status)
            for name, value in response.getheaders():
                if name.lower() not in HOP_BY_HOP | {"content-length"}:
                    self.send_header(name, value)
            self.send_header("X-Cluster-Host", host)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        self.send_error(503, "no live host")

    do_GET = do_POST = do_PATCH = do_HEAD = do_DELETE = do_OPTIONS = _relay  # noqa: N815

    def log_message(self, *args):
        pass


class Receiver(ThreadingHTTPServer):
    """The targets' far end: /sink (after 50 ms) and /slack answer 200, /broken answers 500."""

    daemon_threads = True

    def __init__(self):
        self.lock = threading.Lock()
        self.hits: list[tuple[str, str, float]] = []  # (path, webhook-id, time)
        super().__init__(("127.0.0.1", free_port()), ReceiverHandler)

    def seen(self, path: str) -> list[tuple[str, float]]:
        with self.lock:
            return [(wid, at) for p, wid, at in self.hits if p == path]


class ReceiverHandler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with self.server.lock:
            self.server.hits.append((self.path, self.headers.get("webhook-id", ""), time.time()))
        if self.path == "/sink":  # a receiver that takes a moment: the workers hold leases
            time.sleep(0.05)
        status = 500 if self.path == "/broken" else 200
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


def serve(server: ThreadingHTTPServer) -> None:
    threading.Thread(target=server.serve_forever, daemon=True).start()


# --- a small client through the proxy --------------------------------------------------------


class Client:
    def __init__(self, port: int, key: str):
        self.port = port
        self.key = key

    def call(self, method: str, path: str, body=None, *, route: str | None = None,
             headers: dict | None = None, key: str | None = None):  # fmt: skip
        sent = {"Authorization": f"Bearer {key or self.key}", **(headers or {})}
        if route:
            sent["X-Cluster-Route"] = route
        if isinstance(body, dict):
            body = json.dumps(body).encode()
            sent.setdefault("Content-Type", "application/json")
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            conn.request(method, path, body=body, headers=sent)
            response = conn.getresponse()
            data = response.read()
        finally:
            conn.close()
        try:
            parsed = json.loads(data) if data else {}
        except ValueError:
            parsed = {"raw": data[:200].decode(errors="replace")}
        return response.status, parsed, response.getheader("X-Cluster-Host"), response

    def multipart(self, data: bytes, upload_id: str, *, route: str | None = None):
        boundary = uuid.uuid4().hex
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="uploadId"\r\n\r\n'
                f'{upload_id}\r\n--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                f'filename="f.bin"\r\nContent-Type: application/octet-stream\r\n\r\n'
            ).encode()
            + data
            + f"\r\n--{boundary}--\r\n".encode()
        )
        return self.call(
            "POST",
            "/api/uploads/",
            body,
            route=route,
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
