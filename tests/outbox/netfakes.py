"""Network stand-ins for the egress tests: a scripted resolver, a non-HTTP banner service, a
raw socket receiver that keeps the exact request line, a receiver that trickles its answer and
an HTTP CONNECT proxy."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from dataclasses import dataclass, field


@dataclass
class FakeDns:
    """Answers for chosen names, one list of addresses per lookup (the last one repeats);
    every other name goes to the real resolver. `calls` lists the chosen names looked up."""

    answers: dict[str, list[list[str]]] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)

    def set(self, name: str, *lookups: list[str]) -> None:
        self.answers[name] = [list(addresses) for addresses in lookups]

    def lookup(self, name: str) -> list[str]:
        self.calls.append(name)
        queue = self.answers[name]
        return queue.pop(0) if len(queue) > 1 else queue[0]


def install_fake_dns(monkeypatch) -> FakeDns:
    fake = FakeDns()
    real = socket.getaddrinfo

    def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
        name = host.decode() if isinstance(host, bytes) else host
        if name not in fake.answers:
            return real(host, port, family, type, proto, flags)
        number = int(port or 0)
        rows = []
        for address in fake.lookup(name):
            if ":" in address:
                rows.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (address, number, 0, 0)))
            else:
                rows.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, number)))
        return rows

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return fake


@dataclass
class RawServer:
    """A TCP server on 127.0.0.1: `reply(first_bytes)` gives the bytes written back before
    closing. `received` keeps what each connection sent first (up to the end of its headers)."""

    port: int = 0
    received: list[bytes] = field(default_factory=list)
    sock: socket.socket | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()


def start_raw_server(reply, *, read_request: bool = True, host: str = "127.0.0.1") -> RawServer:
    listener = listen(host)
    server = RawServer(port=listener.getsockname()[1], sock=listener)

    def handle(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            data = b""
            try:
                while read_request and b"\r\n\r\n" not in data and len(data) < 65536:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
            except OSError:
                pass
            server.received.append(data)
            with contextlib.suppress(OSError):
                conn.sendall(reply(data))

    serve_each(listener, handle)
    return server


def banner_server(banner: bytes = b"SSH-2.0-OpenSSH_9.6p1 Ubuntu-3ubuntu13\r\n") -> RawServer:
    """A non-HTTP service: greets with its banner (as SSH, SMTP, Redis errors do), then closes."""
    return start_raw_server(lambda _data: banner, read_request=False)


def http_reply(status: int = 200, body: bytes = b"ok") -> bytes:
    return (
        f"HTTP/1.1 {status} X\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
        + body
    )


def self_signed_certificate(directory, name: str) -> tuple[str, str]:
    """A certificate for `name` (its own CA) and its key, made by the openssl command."""
    import subprocess

    cert, key = str(directory / f"{name}.pem"), str(directory / f"{name}.key")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        + ["-keyout", key, "-out", cert, "-subj", f"/CN={name}"]
        + ["-addext", f"subjectAltName=DNS:{name}"],
        check=True,
        capture_output=True,
    )
    return cert, key


def start_tls_receiver(cert: str, key: str):
    """The scripted receiver behind TLS; records the SNI name each handshake asked for."""
    import ssl

    from tests.outbox.receiver import start_receiver

    state, server = start_receiver()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    names: list[str | None] = []
    context.sni_callback = lambda sock, name, ctx: names.append(name)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    state.url = f"https://127.0.0.1:{server.server_address[1]}/hook"
    return state, server, names


def listen(host: str = "127.0.0.1") -> socket.socket:
    """A listening socket on a free port of `host`."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, 0))
    listener.listen(16)
    return listener


def serve_each(listener: socket.socket, handle) -> None:
    """Accept until the listener closes, each connection on a thread of its own."""

    def serve() -> None:
        while True:
            try:
                conn, _addr = listener.accept()
            except OSError:
                return
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()


def _read_head(conn: socket.socket) -> bytes | None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            return None
        data += chunk
    return data


def start_trickle_server(response: bytes, every: float) -> RawServer:
    """An HTTP receiver that answers one byte every `every` seconds: each read sees a byte
    well within any per-read timeout; the whole answer takes len(response) * every."""
    listener = listen()
    server = RawServer(port=listener.getsockname()[1], sock=listener)

    def handle(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.settimeout(30)
            head = _read_head(conn)
            if head is None:
                return
            server.received.append(head)
            for byte in response:
                time.sleep(every)
                conn.sendall(bytes([byte]))

    serve_each(listener, handle)
    return server


@dataclass
class ConnectProxy(RawServer):
    """An HTTP CONNECT proxy on 127.0.0.1 (as smokescreen or squid would be): records each
    CONNECT request's head, answers `status` (200 opens the tunnel and relays bytes)."""

    status: int = 200
    requests: list[str] = field(default_factory=list)


def start_connect_proxy(status: int = 200) -> ConnectProxy:
    listener = listen()
    proxy = ConnectProxy(port=listener.getsockname()[1], status=status, sock=listener)

    def relay(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def handle(conn: socket.socket) -> None:
        data = _read_head(conn)
        if data is None:
            conn.close()
            return
        head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
        proxy.requests.append(head)
        if proxy.status != 200:
            conn.sendall(f"HTTP/1.1 {proxy.status} Refused\r\ncontent-length: 0\r\n\r\n".encode())
            conn.close()
            return
        authority = head.split(" ", 2)[1]
        host, _, port = authority.rpartition(":")
        upstream = socket.create_connection((host.strip("[]"), int(port)), timeout=10)
        conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        threading.Thread(target=relay, args=(upstream, conn), daemon=True).start()
        relay(conn, upstream)

    serve_each(listener, handle)
    return proxy
