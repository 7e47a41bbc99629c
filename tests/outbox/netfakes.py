"""Network stand-ins for the egress tests: a scripted resolver, a non-HTTP banner service and a
raw socket receiver that keeps the exact request line."""

from __future__ import annotations

import contextlib
import socket
import threading
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
    server = RawServer()
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, 0))
    listener.listen(16)
    server.sock, server.port = listener, listener.getsockname()[1]

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

    def serve() -> None:
        while True:
            try:
                conn, _addr = listener.accept()
            except OSError:
                return
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
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
