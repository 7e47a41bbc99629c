"""The worker's HTTP client against hostile receivers and odd tenant input, on real sockets
(no database): answers that never end, interim answers, 101, slow name servers, many target
URLs, Retry-After oddities, non-ASCII event types and URLs. Each failed on the client's first
version (the security review's reproductions)."""

import asyncio
import contextlib
import os
import resource
import socket
import time
from datetime import UTC, datetime

import pytest

from outbox.delivery import client as C
from outbox.delivery import egress
from outbox.delivery.send import Job, failure_code, send, verdict
from tests.outbox.netfakes import listen, serve_each

OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


def _job(url="http://127.0.0.1:9/", **kw) -> Job:
    job = Job(
        1,
        "tenant",
        "evt",
        1,
        "topic",
        "x.y",
        {},
        "key",
        datetime.now(UTC),
        0,
        "tgt",
        "webhook",
        url,
        secrets=[],
        timeout=3.0,
    )
    for k, v in kw.items():
        setattr(job, k, v)
    return job


async def _server(handler):
    srv = await asyncio.start_server(handler, "127.0.0.1", 0)
    return srv, srv.sockets[0].getsockname()[1]


def _post_to(reply: bytes):
    """One POST to a server that answers it with `reply` (and keeps the connection open):
    the client's answer, or its failure code, and how many connections it kept idle."""

    async def handler(r, w):
        await r.readuntil(b"\r\n\r\n")
        await r.readexactly(2)
        w.write(reply)
        await w.drain()
        await asyncio.sleep(0.5)

    async def main():
        srv, port = await _server(handler)
        cl = C.Client(1)
        try:
            to = C.destination(f"http://127.0.0.1:{port}/")
            return await cl.post(("t", "u"), to, {}, b"{}", 3.0), cl.idle_count()
        except Exception as exc:
            return failure_code(exc), cl.idle_count()
        finally:
            cl.close()
            srv.close()

    return asyncio.run(main())


async def _ok_handler(r, w):
    while True:
        try:
            head = await r.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            await r.readexactly(length)
        except Exception:
            return
        w.write(OK)


def _streaming_server(prefix: bytes):
    """A thread server: answers `prefix` then 1 MB blocks forever (a header that never ends)."""
    s = listen()

    def one(c):
        c.recv(65536)
        try:
            c.sendall(prefix)
            while True:
                c.sendall(b"a" * 1048576)
        except OSError:
            c.close()

    serve_each(s, one)
    return s, s.getsockname()[1]


# a header that never ends grows without bound (httptools concatenates it), CPU quadratic
def test_an_endless_header_is_cut_off_not_buffered():
    s, port = _streaming_server(b"HTTP/1.1 200 OK\r\nx-a: ")

    async def main():
        cl = C.Client(1)
        to = C.destination(f"http://127.0.0.1:{port}/")
        started = time.perf_counter()
        with pytest.raises(Exception) as caught:
            await cl.post(("t", "u"), to, {}, b"{}", 4.0)
        return time.perf_counter() - started, caught.value

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    elapsed, exc = asyncio.run(main())
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    s.close()
    # a bounded parser (http.client 64 KB/line, aiohttp 8 KB, h11 16 KB) refuses within ms
    assert failure_code(exc) == "protocol_error", (failure_code(exc), elapsed, grown_mb)
    assert grown_mb < 20, f"{grown_mb:.0f} MB buffered for one header"


# 1xx and final answer in one segment -> status 0 ("http_0")
def test_an_interim_answer_followed_by_the_final_one_in_one_segment():
    answer, _idle = _post_to(b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n" + OK)
    assert answer.status == 200


# one tenant's slow DNS holds every executor thread; other tenants' connects time out
def test_a_slow_resolver_for_one_tenant_does_not_stall_the_others(monkeypatch):
    real = socket.getaddrinfo

    def fake(host, port, *a, **k):
        if host.endswith(".slow.test"):
            time.sleep(8)  # an authoritative server that never answers (glibc retries)
            raise socket.gaierror(socket.EAI_AGAIN, "timeout")
        if host == "victim.test":
            host = "127.0.0.1"
        return real(host, port, *a, **k)

    monkeypatch.setattr(egress.socket, "getaddrinfo", fake)

    async def main():
        srv, port = await _server(_ok_handler)
        cl = C.Client(32)

        async def attacker(i):
            with contextlib.suppress(BaseException):
                await cl.post(("evil", str(i)), C.destination(f"http://n{i}.slow.test/"), {},
                              b"{}", 3.0)  # fmt: skip

        tasks = [asyncio.create_task(attacker(i)) for i in range(min(32, os.cpu_count() + 4))]
        await asyncio.sleep(0.1)
        try:
            r = await cl.post(
                ("good", "u"), C.destination(f"http://victim.test:{port}/"), {}, b"{}", 3.0
            )
            return r.status
        except BaseException as exc:
            return type(exc).__name__
        finally:
            await asyncio.gather(*tasks)
            cl.close()
            srv.close()

    assert asyncio.run(main()) == 200


# idle keep-alive connections are never evicted (no idle timeout, dead keys kept)
def test_idle_connections_of_many_target_urls_are_bounded():
    async def main():
        srv, port = await _server(_ok_handler)
        cl = C.Client(32)
        for i in range(C.MAX_IDLE_CONNECTIONS + 44):  # targets deleted/re-created, new ids
            url = f"http://127.0.0.1:{port}/hook?v={i}"
            await cl.post((f"target-{i}", url), C.destination(url), {}, b"{}", 3.0)
        held = sum(1 for pool in cl.idle.values() for c in pool if c.usable())
        cl.close()
        srv.close()
        return held

    assert asyncio.run(main()) <= C.MAX_IDLE_CONNECTIONS


# a 101 answer escapes data_received (HttpParserUpgrade is not an HttpParserError)
def test_a_101_answer_is_a_protocol_error(caplog):
    code, _idle = _post_to(
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\nconnection: upgrade\r\n\r\n"
    )
    assert code == "protocol_error"
    assert "Fatal error: protocol.data_received() call failed" not in caplog.text


# Retry-After with a non-ASCII digit makes verdict() raise (send "never raises")
def test_a_retry_after_with_a_unicode_digit_is_ignored():
    result = verdict(_job(), 429, {"retry-after": "\u00b2"}, b"", 1.0)
    assert result.status_code == 429 and result.error == "http_429"


# non-latin-1 event type / URL path / IDN host: never deliverable, "connection_error"
@pytest.mark.parametrize(
    "change",
    [
        {"event_type": "\u8ba2\u5355.created"},
        {"url": "http://127.0.0.1:{port}/hook/\u20ac"},
    ],
)
def test_unicode_in_header_values_or_the_path_is_encoded_not_a_failure(change):
    async def main():
        srv, port = await _server(_ok_handler)
        job = _job(url=f"http://127.0.0.1:{port}/")
        for k, v in change.items():
            setattr(job, k, v.format(port=port))
        cl = C.Client(1)
        try:
            return await send(cl, job)
        finally:
            cl.close()
            srv.close()

    result = asyncio.run(main())
    assert (result.outcome, result.error) == ("delivered", ""), (result.outcome, result.error)


def test_a_space_in_the_url_path_is_not_sent_raw_in_the_request_line():
    to = C.destination("http://203.0.113.9/a b?c d\x0b")
    assert " " not in to.request_target and "\x0b" not in to.request_target


# interim answers are counted: a flood of 1xx is a protocol error, not a hung slot
def test_a_flood_of_interim_answers_is_a_protocol_error():
    code, _idle = _post_to(b"HTTP/1.1 100 Continue\r\n\r\n" * (C.MAX_INTERIM + 1) + OK)
    assert code == "protocol_error"


# a second answer in the same segment changes nothing of the first, and the connection goes
def test_a_stray_second_answer_neither_rewrites_the_first_nor_is_reused():
    answer, idle = _post_to(
        b"HTTP/1.1 503 Busy\r\nretry-after: 5\r\ncontent-length: 0\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nretry-after: 99999\r\ncontent-length: 0\r\n\r\n"
    )
    assert (answer.status, answer.headers) == (503, {"retry-after": "5"})
    assert idle == 0
