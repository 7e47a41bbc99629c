"""The worker's HTTP/1.1 client: every send of a worker on one asyncio event loop, keep-alive
connections per target, the answer parsed by httptools (llhttp, C).

Why not urllib3 on threads (what this replaced): 32 sender threads spent about 0.5 ms of CPU
per request in the client alone (GIL hand-offs and pure-Python HTTP), more than the worker's
whole budget; one loop with a C parser spends about 0.06 ms (bench/outbox.py prints both).

What a send may do, whatever the receiver does:
- connect only to an address the egress guard checked (resolved once per connection, every
  answer checked, the socket pinned to one of them; TLS still verifies the URL's host name),
  directly or through `OUTBOX_EGRESS_PROXY` (an HTTP CONNECT tunnel to that checked address);
- take at most `timeout` seconds in all (connect, write, the whole answer): a receiver that
  trickles its answer a byte at a time holds a slot no longer than one that never answers;
- read at most READ_LIMIT_BYTES of the answer (a longer one closes the connection);
- never follow a redirect (the status is the verdict).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import ipaddress
import socket
import ssl
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple
from urllib.parse import quote, unquote, urlsplit

import certifi
import httptools

from outbox import conf
from outbox.delivery import egress

READ_LIMIT_BYTES = 64 * 1024  # read at most this of an answer; a longer one closes the socket
MAX_HEAD_BYTES = 64 * 1024  # status line and headers (http.client's limit per line)
MAX_HEADERS = 100  # header fields of one answer (http.client's limit)
MAX_INTERIM = 5  # 1xx answers before the real one (Go's net/http allows 5)
CONNECT_TIMEOUT_SECONDS = 5.0  # of the send's whole timeout, at most this to connect
# Idle keep-alive connections a worker keeps, over all targets (the least recently used go
# first: thousands of tenants' targets must not exhaust the worker's file descriptors), and
# how long one is kept unused (receivers drop theirs after a while anyway).
MAX_IDLE_CONNECTIONS = 256
IDLE_SECONDS = 30.0
# Headers of the answer the verdict reads; the others are not kept.
KEPT_HEADERS = frozenset({b"retry-after"})


class PeerClosed(ConnectionError):
    """The receiver closed the connection before a complete answer."""


class ProxyRefused(ConnectionError):
    """The egress proxy did not open the tunnel (its status is in the message)."""


@dataclass(frozen=True)
class Destination:
    """A target URL as the client uses it: where to connect, what to ask, how to name it."""

    scheme: str
    host: str  # the URL's host name (or address), without brackets
    port: int
    request_target: str  # origin-form: /path?query
    host_header: str  # host[:port], the port only when not the scheme's default

    @property
    def tls(self) -> bool:
        return self.scheme == "https"


@functools.lru_cache(maxsize=4096)
def destination(url: str) -> Destination | None:
    """The parts of a target URL the client needs, or None when the egress guard would not let
    it out (not http(s), no host, unparsable)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in egress.ALLOWED_SCHEMES or not parts.hostname:
        return None
    default = 443 if parts.scheme == "https" else 80
    host = parts.hostname
    try:  # an international name goes out as its ASCII (punycode) form, as browsers send it
        shown = host if host.isascii() else host.encode("idna").decode("ascii")
    except UnicodeError:
        return None
    shown = f"[{shown}]" if ":" in shown else shown
    # characters a request line may not carry (spaces, controls, non-ASCII) percent-encoded,
    # as urllib3 does; existing escapes kept
    path = quote(parts.path or "/", safe=_PATH_SAFE)
    query = quote(parts.query, safe=_PATH_SAFE + "?")
    return Destination(
        scheme=parts.scheme,
        host=host,
        port=port or default,
        request_target=path + (f"?{query}" if query else ""),
        host_header=shown if port in (None, default) else f"{shown}:{port}",
    )


_PATH_SAFE = "/%!$&'()*+,;=:@-._~"  # RFC 3986 pchar and "/", plus "%" for existing escapes


class Response(NamedTuple):
    status: int
    headers: dict[str, str]  # lower-case names, only KEPT_HEADERS
    content: bytes  # at most READ_LIMIT_BYTES
    public: bool  # the peer's address is public: only then may a tenant read the body


@functools.lru_cache(maxsize=8)
def _tls_context(cafile: str) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=cafile)


@functools.lru_cache(maxsize=8)
def _proxy(url: str) -> tuple[str, int, str | None]:
    """OUTBOX_EGRESS_PROXY: `http://[user:password@]host:port` -> host, port, Basic auth."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError("OUTBOX_EGRESS_PROXY must be http://[user:password@]host:port")
    auth = None
    if parts.username is not None:
        raw = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        auth = "Basic " + base64.b64encode(raw.encode()).decode()
    return parts.hostname, parts.port or 3128, auth


# --- one connection ------------------------------------------------------------------------------


class Connection(asyncio.Protocol):
    """One keep-alive connection: writes a request, parses its answer, hands it to `waiter`.

    What a receiver may send is bounded: the head (status line and headers) at MAX_HEAD_BYTES
    and MAX_HEADERS, at most MAX_INTERIM interim (1xx) answers, at most MAX_HEAD_BYTES of
    framing without a byte of body (endless trailers or chunk extensions), the body at
    READ_LIMIT_BYTES. Past any of these the answer is a protocol error."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.public = False
        self.closed = False
        self.waiter: asyncio.Future | None = None
        self.parser = httptools.HttpResponseParser(self)
        self._reset()

    def _reset(self) -> None:
        """A fresh answer (the parser carries on by itself from one message to the next)."""
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = bytearray()
        self.reusable = False
        self.header_count = 0
        self.interim = 0
        self.unread = 0  # bytes fed since the last progress (head complete, a body piece)
        self.fault: Exception | None = None

    # asyncio's side
    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.waiter is None:  # bytes nobody asked for (an idle connection): unusable
            self.close()
            return
        self.unread += len(data)
        try:
            self.parser.feed_data(data)
        except Exception as exc:  # HttpParserError, HttpParserUpgrade (a 101) alike
            self.fault = self.fault or exc
        if self.fault is None and self.waiter is not None and self.unread > MAX_HEAD_BYTES:
            self.fault = httptools.HttpParserError("answer head or framing too long")
        if self.fault is not None:
            fault = self.fault
            if not isinstance(fault, httptools.HttpParserError):
                fault = httptools.HttpParserError(f"{type(fault).__name__}")
            self._done(fault)
            self.close()

    def eof_received(self) -> bool:
        return False  # close the transport: connection_lost settles the waiter

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None:
            if self.status >= 200 and exc is None and self.fault is None:
                self._done(None)  # an answer delimited by the connection's end
            else:
                self._done(exc or PeerClosed("closed before a complete answer"))

    # httptools' side
    def on_message_begin(self) -> None:
        if self.waiter is None:  # a second answer to one request: out of step, not reused
            self.close()

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_count += 1
        if self.header_count > MAX_HEADERS:
            self.fault = httptools.HttpParserError("too many header fields")
            return
        name = name.lower()
        if name in KEPT_HEADERS:
            self.headers[name.decode("latin-1")] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.unread = 0

    def on_body(self, chunk: bytes) -> None:
        self.unread = 0
        room = READ_LIMIT_BYTES - len(self.body)
        if len(chunk) >= room and self.waiter is not None:
            self.body += chunk[:room]
            self._done(None)  # enough of it: the rest is not read, the connection goes
            self.close()
        else:
            self.body += chunk

    def on_message_complete(self) -> None:
        if 100 <= self.status < 200:  # an interim answer (100 Continue): the real one follows
            interim, fault = self.interim + 1, self.fault
            self._reset()
            self.interim, self.fault = interim, fault
            if interim > MAX_INTERIM:
                self.fault = httptools.HttpParserError("too many interim answers")
            return
        self.reusable = self.parser.should_keep_alive()
        self._done(None)

    # ours
    def request(self, data: bytes) -> asyncio.Future:
        if not self.usable() or self.transport is None:
            raise PeerClosed("the connection closed before the request")
        self._reset()
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return self.waiter

    def _done(self, exc: BaseException | None) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is None or waiter.done():
            return
        exc = exc or self.fault  # a fault seen earlier in the same data wins over an answer
        if exc is not None:
            waiter.set_exception(exc)
        else:
            waiter.set_result(Response(self.status, self.headers, bytes(self.body), self.public))
        self.headers, self.body = {}, bytearray()  # the answer's own; nothing kept while idle

    def usable(self) -> bool:
        return not self.closed and self.transport is not None and not self.transport.is_closing()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()  # no lingering: an answer we stopped reading is dropped


class _Handshake(asyncio.Protocol):
    """The proxy's answer to CONNECT: its head, up to the blank line."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.head: asyncio.Future = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if b"\r\n\r\n" in self.buffer and not self.head.done():
            self.head.set_result(bytes(self.buffer))
        elif len(self.buffer) > 8192 and not self.head.done():
            self.head.set_exception(ProxyRefused("proxy answer too long"))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.head.done():
            self.head.set_exception(exc or ProxyRefused("proxy closed the connection"))


# --- the client ------------------------------------------------------------------------------


class Client:
    """Keep-alive connections per key (a target and its URL: a changed URL gets new ones, and
    no two targets ever share one). Used from its event loop only."""

    def __init__(self, pool_size: int, max_idle: int = MAX_IDLE_CONNECTIONS):
        self.pool_size, self.max_idle = pool_size, max_idle
        # Name lookups block a thread for as long as the resolver likes (a name server that
        # never answers: 10-30 s, past any send's deadline): one thread per send slot, as
        # many as can be in flight, so one tenant's slow names never queue another's.
        self.resolver = ThreadPoolExecutor(max_workers=pool_size, thread_name_prefix="outbox-dns")
        self._proxy_address: tuple[str, float] | None = None  # the proxy's, and until when
        self.idle: dict[tuple[str, str], list[Connection]] = {}
        # every idle connection, least recently used first: connection -> (key, idle since)
        self._lru: OrderedDict[Connection, tuple[tuple[str, str], float]] = OrderedDict()

    async def post(
        self,
        key: tuple[str, str],
        to: Destination,
        headers: dict[str, str],
        body: bytes,
        timeout: float,
    ) -> Response:
        """POST `body`; the answer within `timeout` seconds in all, or TimeoutError."""
        head = [f"POST {to.request_target} HTTP/1.1\r\nhost: {to.host_header}\r\n"]
        for name, value in headers.items():
            if "\r" in value or "\n" in value:
                raise ValueError(f"header {name} holds a line break")
            head.append(f"{name}: {value}\r\n")
        head.append(f"content-length: {len(body)}\r\n\r\n")
        # UTF-8: an event type beyond latin-1 is sent (as obs-text), not an undeliverable event
        data = "".join(head).encode() + body
        async with asyncio.timeout(timeout):
            conn = self._idle_connection(key)
            if conn is None:
                async with asyncio.timeout(min(timeout, CONNECT_TIMEOUT_SECONDS)):
                    conn = await self._connect(to)
            try:
                response = await conn.request(data)
            except BaseException:
                conn.close()
                raise
        if conn.reusable and conn.usable():
            self._keep(key, conn)
        else:
            conn.close()
        return response

    def _idle_connection(self, key: tuple[str, str]) -> Connection | None:
        pool = self.idle.get(key)
        oldest = time.monotonic() - IDLE_SECONDS
        while pool:
            conn = pool.pop()
            _key, since = self._lru.pop(conn)
            if conn.usable() and since >= oldest:
                return conn
            conn.close()
        self.idle.pop(key, None)
        return None

    def _keep(self, key: tuple[str, str], conn: Connection) -> None:
        pool = self.idle.setdefault(key, [])
        if len(pool) >= self.pool_size:
            conn.close()
            return
        pool.append(conn)
        self._lru[conn] = (key, time.monotonic())
        while len(self._lru) > self.max_idle:
            stale, (stale_key, _since) = self._lru.popitem(last=False)
            left = self.idle[stale_key]
            left.remove(stale)
            if not left:
                del self.idle[stale_key]
            stale.close()

    def idle_count(self) -> int:
        return len(self._lru)

    def close(self) -> None:
        for conn in self._lru:
            conn.close()
        self._lru.clear()
        self.idle.clear()
        self.resolver.shutdown(wait=False, cancel_futures=True)

    async def _proxy_lookup(self, host: str, port: int) -> str:
        """The proxy's address, looked up once a minute (operator-set: not judged by the
        guard), on the resolver threads, never on the event loop."""
        now = time.monotonic()
        if self._proxy_address is not None and self._proxy_address[1] > now:
            return self._proxy_address[0]
        loop = asyncio.get_running_loop()
        answers = await loop.run_in_executor(
            self.resolver, lambda: socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        )
        address = str(answers[0][4][0])
        self._proxy_address = (address, now + 60.0)
        return address

    # connecting

    async def _connect(self, to: Destination) -> Connection:
        """Resolve once, check every answer (egress), connect to the first that answers."""
        answers = await _resolve_checked(to.host, to.port, self.resolver)
        last_error: BaseException | None = None
        for family, sockaddr in answers:
            address = str(sockaddr[0])
            try:
                conn = await self._open(to, address, family)
            except (OSError, TimeoutError) as exc:  # a TLS failure included: next answer
                last_error = exc
                continue
            conn.public = egress.address_is_public(ipaddress.ip_address(address.split("%")[0]))
            return conn
        raise last_error or OSError("no address to connect to")

    async def _open(self, to: Destination, address: str, family: int) -> Connection:
        loop = asyncio.get_running_loop()
        tls = _tls_context(certifi.where()) if to.tls else None
        proxy = conf.get("OUTBOX_EGRESS_PROXY")
        if not proxy:
            _transport, conn = await loop.create_connection(
                Connection,
                host=address,
                port=to.port,
                family=family,
                ssl=tls,
                server_hostname=to.host if tls else None,
            )
            return conn
        return await self._through_proxy(proxy, to, address, tls)

    async def _through_proxy(
        self, proxy: str, to: Destination, address: str, tls: ssl.SSLContext | None
    ) -> Connection:
        """A CONNECT tunnel to the checked address (never the name: the proxy cannot be made to
        resolve it differently), then TLS inside it with the URL's host name."""
        loop = asyncio.get_running_loop()
        proxy_host, proxy_port, auth = _proxy(proxy)
        address_of_proxy = await self._proxy_lookup(proxy_host, proxy_port)
        transport, handshake = await loop.create_connection(
            _Handshake, address_of_proxy, proxy_port
        )
        authority = f"[{address}]:{to.port}" if ":" in address else f"{address}:{to.port}"
        ask = f"CONNECT {authority} HTTP/1.1\r\nhost: {authority}\r\n"
        if auth:
            ask += f"proxy-authorization: {auth}\r\n"
        transport.write((ask + "\r\n").encode("latin-1"))
        try:
            head = await handshake.head
            status_line = head.split(b"\r\n", 1)[0].split(b" ", 2)
            if len(status_line) < 2 or not status_line[1].startswith(b"2"):
                code = status_line[1].decode("latin-1", "replace") if len(status_line) > 1 else ""
                raise ProxyRefused(f"proxy answered {code[:3]}")
            if head.index(b"\r\n\r\n") + 4 != len(head):
                raise ProxyRefused("proxy sent bytes before the tunnel opened")
        except BaseException:
            transport.abort()
            raise
        conn = Connection()
        if tls is not None:
            tls_transport = await loop.start_tls(transport, conn, tls, server_hostname=to.host)
            if tls_transport is None:
                raise PeerClosed("proxy closed the tunnel during TLS")
            conn.connection_made(tls_transport)
        else:
            transport.set_protocol(conn)
            conn.connection_made(transport)
        return conn


async def _resolve_checked(
    host: str, port: int, resolver: ThreadPoolExecutor
) -> list[tuple[int, tuple]]:
    """egress.resolve_checked, on the resolver threads when a name must be looked up (an
    address needs no lookup: it is checked right here, on the loop)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(resolver, egress.resolve_checked, host, port)
    return egress.resolve_checked(host, port)
