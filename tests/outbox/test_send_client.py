"""The worker's HTTP client against receivers that misbehave on purpose, and through an egress
proxy: a whole-send deadline, bounded answers, keep-alive, HTTP CONNECT tunnels to the checked
address only."""

import pytest

from outbox.models import Delivery, DeliveryAttempt
from tests.outbox.factories import make_target, publish
from tests.outbox.helpers import deliver_round
from tests.outbox.netfakes import (
    install_fake_dns,
    start_connect_proxy,
    start_raw_server,
    start_trickle_server,
)

pytestmark = pytest.mark.django_db

SLOW_OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


def deliver_through(tenant, server, path: str = "/x", **target) -> Delivery:
    """One event to a target on `server`, one delivery round, the server closed after."""
    try:
        make_target(tenant, url=f"{server.url}{path}", **target)
        publish(tenant)
        deliver_round()
    finally:
        server.close()
    return Delivery.objects.get()


def count_peers(server) -> tuple[list, object]:
    """The client addresses of every POST `server` receives (a list that fills up), and a
    function that takes the counting out again."""
    peers: list = []
    handler = server.RequestHandlerClass
    original = handler.do_POST

    def counting(self):
        peers.append(self.client_address)
        original(self)

    handler.do_POST = counting

    def restore():
        handler.do_POST = original

    return peers, restore


# --- a whole-send deadline --------------------------------------------------------------------


def test_a_receiver_trickling_its_answer_is_cut_off_at_the_targets_timeout(tenant):
    """Each byte comes 0.15 s after the previous one (inside any per-read timeout); the whole
    answer would take 6 s. The target's 1 s timeout bounds the whole send: `timeout`, and the
    slot is free again, not held for as long as the receiver cares to trickle."""
    server = start_trickle_server(SLOW_OK, every=0.15)
    delivery = deliver_through(tenant, server, "/slow", timeout_seconds=1)
    attempt = DeliveryAttempt.objects.get()
    assert (delivery.status, delivery.last_error) == ("retrying", "timeout")
    assert attempt.error == "timeout" and attempt.status_code is None
    assert attempt.duration_ms < 6000 * 0.5  # cut off, not read to the end


def test_an_endless_answer_is_read_up_to_the_limit_and_the_verdict_recorded(tenant):
    """A receiver streaming a huge body (chunked, never ending) cannot hold the slot or the
    worker's memory: the first 64 KB are read, the connection dropped, the 200 recorded."""
    chunk = b"10000\r\n" + b"x" * 0x10000 + b"\r\n"
    head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
    server = start_raw_server(lambda data: head + chunk * 64)  # 4 MB, no final chunk
    assert deliver_through(tenant, server, "/big").status == "delivered"
    assert DeliveryAttempt.objects.get().status_code == 200


def test_one_deliverer_reuses_its_connection_across_sends(tenant):
    from outbox.delivery import Deliverer
    from tests.outbox.receiver import start_receiver

    receiver, server = start_receiver()
    peers, restore = count_peers(server)
    deliverer = Deliverer(concurrency=1)
    try:
        make_target(tenant, url=receiver.url)
        for _ in range(3):
            publish(tenant)
            assert deliverer.run_once() == 1
    finally:
        deliverer.close()
        restore()
        server.shutdown()
        server.server_close()
    assert len(receiver.requests) == 3 and len(set(peers)) == 1


def test_a_receiver_closing_without_an_answer_is_connection_closed(tenant):
    server = start_raw_server(lambda data: b"")
    assert deliver_through(tenant, server).last_error == "connection_closed"


def test_an_answer_delimited_by_closing_the_connection_is_read(tenant):
    """HTTP/1.0 style: no content-length, the end of the body is the end of the connection."""
    server = start_raw_server(lambda data: b"HTTP/1.0 202 Accepted\r\n\r\nqueued")
    assert deliver_through(tenant, server).status == "delivered"
    assert DeliveryAttempt.objects.get().status_code == 202


# --- OUTBOX_EGRESS_PROXY ------------------------------------------------------------------------


@pytest.fixture
def fake_dns(monkeypatch):
    return install_fake_dns(monkeypatch)


@pytest.fixture
def egress_proxy(settings):
    """Starts a CONNECT proxy and sends every delivery through it (`credentials`: user:password
    in its URL); closed when the test ends."""
    started = []

    def use(status: int = 200, credentials: str = ""):
        proxy = start_connect_proxy(status=status)
        started.append(proxy)
        userinfo = f"{credentials}@" if credentials else ""
        settings.OUTBOX_EGRESS_PROXY = f"http://{userinfo}127.0.0.1:{proxy.port}"
        return proxy

    yield use
    for proxy in started:
        proxy.close()


def test_every_send_goes_through_the_egress_proxy_to_the_checked_address(
    tenant, fake_dns, egress_proxy
):
    from tests.outbox.receiver import start_receiver

    receiver, server = start_receiver()
    proxy = egress_proxy()
    try:
        port = server.server_address[1]
        fake_dns.set("hooks.example.test", ["127.0.0.1"])
        make_target(tenant, url=f"http://hooks.example.test:{port}/in?x=1")
        publish(tenant)
        deliver_round()
    finally:
        server.shutdown()
        server.server_close()
    # the tunnel goes to the address checked here, never the name (no second resolution)
    assert [r.split("\r\n")[0] for r in proxy.requests] == [f"CONNECT 127.0.0.1:{port} HTTP/1.1"]
    assert len(receiver.requests) == 1
    assert receiver.requests[0].headers["host"] == f"hooks.example.test:{port}"
    assert Delivery.objects.get().status == "delivered"


def test_https_through_the_proxy_verifies_the_urls_name(
    tenant, fake_dns, tmp_path, monkeypatch, egress_proxy
):
    from tests.outbox.test_egress import deliver_to_two_names_on_one_certificate

    proxy = egress_proxy()
    requests, _port, sni = deliver_to_two_names_on_one_certificate(
        tenant, fake_dns, tmp_path, monkeypatch
    )
    assert len(proxy.requests) == 2 and len(requests) == 1
    assert sorted(sni) == ["hooks.example.test", "other.example.test"]
    errors = dict(Delivery.objects.values_list("target__name", "last_error"))
    assert errors == {"good": "", "wrong": "tls_error"}


def test_a_proxy_refusing_the_tunnel_is_proxy_error(tenant, receiver, egress_proxy):
    proxy = egress_proxy(status=403)
    make_target(tenant, url=receiver.url)
    publish(tenant)
    deliver_round()
    assert receiver.requests == [] and len(proxy.requests) == 1
    delivery = Delivery.objects.get()
    assert (delivery.status, delivery.last_error) == ("retrying", "proxy_error")


def test_the_guard_still_refuses_private_addresses_with_a_proxy(
    tenant, settings, receiver, egress_proxy
):
    """The proxy is no way around the guard: a refused address never reaches it."""
    make_target(tenant, url=receiver.url)  # created while local networks were allowed
    proxy = egress_proxy()
    settings.OUTBOX_ALLOWED_TARGET_NETWORKS = []
    publish(tenant)
    deliver_round()
    assert proxy.requests == [] and receiver.requests == []
    delivery = Delivery.objects.get()
    assert (delivery.status, delivery.last_error) == ("dead", "target_url_not_allowed")


def test_proxy_credentials_go_in_proxy_authorization(tenant, receiver, egress_proxy):
    proxy = egress_proxy(credentials="atlas:s%40cret")
    make_target(tenant, url=receiver.url)
    publish(tenant)
    deliver_round()
    (head,) = proxy.requests
    # base64("atlas:s@cret")
    assert "proxy-authorization: Basic YXRsYXM6c0BjcmV0" in head.split("\r\n")
    assert Delivery.objects.get().status == "delivered"


# --- idle connections -------------------------------------------------------------------------


def test_idle_connections_are_capped_over_all_targets_least_recently_used_first():
    """A worker serving thousands of targets must not keep a socket open for each: past the
    cap, the connection idle the longest is closed."""
    import asyncio

    from outbox.delivery.client import Client, destination
    from tests.outbox.receiver import start_receiver

    servers = [start_receiver() for _ in range(3)]
    try:

        async def run():
            client = Client(pool_size=4, max_idle=2)
            for n, (receiver, _server) in enumerate(servers):
                url = f"{receiver.url}/t{n}"
                answer = await client.post((f"t{n}", url), destination(url), {}, b"{}", 5.0)
                assert answer.status == 200
            kept = sorted(key for key, pool in client.idle.items() if pool)
            count = client.idle_count()
            client.close()
            return kept, count

        kept, count = asyncio.run(run())
    finally:
        for _receiver, server in servers:
            server.shutdown()
            server.server_close()
    assert count == 2
    assert [key[0] for key in kept] == ["t1", "t2"]  # t0, used first, was closed


def test_a_connection_idle_too_long_is_not_reused(monkeypatch):
    import asyncio

    from outbox.delivery import client as client_module
    from outbox.delivery.client import Client, destination
    from tests.outbox.receiver import start_receiver

    receiver, server = start_receiver()
    peers, restore = count_peers(server)
    try:

        async def run():
            client = Client(pool_size=4)
            url = f"{receiver.url}/x"
            await client.post(("t", url), destination(url), {}, b"{}", 5.0)
            monkeypatch.setattr(client_module, "IDLE_SECONDS", 0.0)
            await asyncio.sleep(0.01)
            await client.post(("t", url), destination(url), {}, b"{}", 5.0)
            client.close()

        asyncio.run(run())
    finally:
        restore()
        server.shutdown()
        server.server_close()
    assert len(peers) == 2 and peers[0] != peers[1]
