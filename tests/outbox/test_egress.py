"""Targets cannot reach private networks: refused when a target is created (400
target_url_not_allowed) and again at connect time, on the address that was checked (pinned).
Attacks as a hostile tenant with a secret key would run them."""

import pytest

from outbox.models import Delivery, DeliveryAttempt, Target
from tests.outbox.factories import make_target, publish
from tests.outbox.helpers import deliver_round
from tests.outbox.netfakes import (
    banner_server,
    install_fake_dns,
    self_signed_certificate,
    start_raw_server,
    start_tls_receiver,
)
from tests.outbox.receiver import start_receiver
from tests.tenancy import assert_error

pytestmark = pytest.mark.django_db

PUBLIC = "93.184.216.34"  # a global unicast address; never connected to in these tests


@pytest.fixture
def no_local_networks(settings):
    settings.OUTBOX_ALLOWED_TARGET_NETWORKS = []


@pytest.fixture
def fake_dns(monkeypatch):
    return install_fake_dns(monkeypatch)


def create(api, url, name="hook", kind="webhook"):
    return api.post("/api/outbox/targets", {"name": name, "kind": kind, "url": url}, format="json")


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:5432/",
        "http://[::1]/",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/",
        "http://192.168.1.1/",
        "http://172.16.0.1/",
        "http://localhost/",
        "http://0.0.0.0:8000/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::ffff:a9fe:a9fe]/",  # 169.254.169.254, IPv4-mapped
        "http://[64:ff9b::7f00:1]/",  # NAT64 of 127.0.0.1
        "http://[2002:7f00:1::1]/",  # 6to4 of 127.0.0.1
        "http://2130706433/",  # 127.0.0.1 as one decimal number
        "http://0x7f.1/",  # 127.0.0.1 in inet_aton's hex shorthand
        "http://100.64.0.1/",  # carrier-grade NAT
        "http://192.0.2.10/",  # documentation (TEST-NET-1)
        "http://198.51.100.1/",
        "http://203.0.113.1/",
        "http://198.18.0.1/",  # benchmarking
        "http://224.0.0.1/",  # multicast
        "http://239.255.255.250:1900/",
        "http://255.255.255.255/",
        "http://240.0.0.1/",
        "http://[fd12:3456::1]/",  # unique local
        "http://[fe80::1]/",  # link-local
        "http://[ff02::1]/",  # multicast
        "http://[fec0::1]/",  # site-local (deprecated, still not public)
        "http://[2001:db8::1]/",  # documentation
        "http://[fd00:ec2::254]/",  # AWS metadata over IPv6
        "http://168.63.129.16/",  # Azure wire server (a metadata service on a public address)
        "ftp://example.com/file",
        "file:///etc/passwd",
        "gopher://127.0.0.1:6379/_INFO",
    ],
)
def test_private_and_odd_urls_are_refused_when_a_target_is_created(api, no_local_networks, url):
    error = assert_error(create(api, url), 400, "target_url_not_allowed")
    assert "127.0.0.1" not in error["message"]  # says why, not what the name resolved to
    assert Target.objects.count() == 0


def test_a_name_resolving_to_a_private_address_is_refused(api, no_local_networks, fake_dns):
    fake_dns.set("intranet.example.test", ["10.1.2.3"])
    assert_error(create(api, "https://intranet.example.test/x"), 400, "target_url_not_allowed")
    # every answer must be public: one private address among public ones is enough to refuse
    fake_dns.set("mixed.example.test", [PUBLIC, "127.0.0.1"])
    assert_error(create(api, "https://mixed.example.test/x"), 400, "target_url_not_allowed")
    assert Target.objects.count() == 0


def test_a_public_name_is_accepted(api, no_local_networks, fake_dns):
    fake_dns.set("hooks.example.test", [PUBLIC, "2606:4700::1111"])
    response = create(api, "https://hooks.example.test/in")
    assert response.status_code == 201, response.json()
    assert Target.objects.get().url == "https://hooks.example.test/in"


def test_allowed_networks_exempt_local_development(api, settings):
    settings.OUTBOX_ALLOWED_TARGET_NETWORKS = ["127.0.0.0/8", "10.20.0.0/16"]
    assert create(api, "http://127.0.0.1:9/in").status_code == 201
    assert create(api, "http://10.20.3.4/in", name="lan").status_code == 201
    assert_error(create(api, "http://10.21.0.1/", name="other"), 400, "target_url_not_allowed")


def test_metadata_addresses_stay_refused_even_when_their_network_is_allowed(api, settings):
    settings.OUTBOX_ALLOWED_TARGET_NETWORKS = ["169.254.0.0/16", "fd00::/8", "0.0.0.0/0"]
    for url in ("http://169.254.169.254/", "http://[fd00:ec2::254]/", "http://[::ffff:a9fe:a9fe]/"):
        assert_error(create(api, url), 400, "target_url_not_allowed")
    assert create(api, "http://169.254.10.1/").status_code == 201  # the rest of it is allowed


def test_a_changed_url_is_checked_too(tenant, no_local_networks, fake_dns):
    """The admin edits targets through a form that runs the same check."""
    from outbox.admin import TargetAdminForm

    fake_dns.set("hooks.example.test", [PUBLIC])
    target = make_target(tenant, url="https://hooks.example.test/in")
    data = {
        "tenant": tenant.pk,
        "name": target.name,
        "kind": "webhook",
        "url": "http://127.0.0.1:5432/",
        "timeout_seconds": 10,
        "is_enabled": True,
    }
    form = TargetAdminForm(data=data, instance=target)
    assert not form.is_valid()
    assert "url" in form.errors
    target.refresh_from_db()
    assert target.url == "https://hooks.example.test/in"


# --- connect time -----------------------------------------------------------------------------


def test_a_target_that_turned_private_is_refused_at_connect_time(tenant, settings, receiver):
    """The URL passed when it was created (local networks allowed then); the network allowance
    is gone now: the worker refuses without connecting, once, permanently, with a fixed text."""
    make_target(tenant, url=receiver.url)
    settings.OUTBOX_ALLOWED_TARGET_NETWORKS = []
    publish(tenant)
    deliver_round()
    assert receiver.requests == []
    delivery = Delivery.objects.get()
    assert (delivery.status, delivery.attempts) == ("dead", 1)
    assert delivery.last_error == "target_url_not_allowed"
    attempt = DeliveryAttempt.objects.get()
    assert (attempt.outcome, attempt.error, attempt.status_code) == (
        "permanent",
        "target_url_not_allowed",
        None,
    )


def test_dns_rebinding_after_the_check_reaches_nothing(tenant, settings, fake_dns):
    """rebind.example.test answers an allowed address when the target is created, then an
    internal one: the internal service (on 127.0.0.2) must never see the request."""
    settings.OUTBOX_ALLOWED_TARGET_NETWORKS = ["127.0.0.1/32"]
    internal, internal_server = start_receiver_on("127.0.0.2")
    try:
        port = internal_server.server_address[1]
        fake_dns.set("rebind.example.test", ["127.0.0.1"], ["127.0.0.2"])
        make_target(tenant, url=f"http://rebind.example.test:{port}/hook")
        publish(tenant)
        deliver_round()
        assert internal.requests == []
        delivery = Delivery.objects.get()
        assert (delivery.status, delivery.last_error) == ("dead", "target_url_not_allowed")
    finally:
        internal_server.shutdown()
        internal_server.server_close()


def test_the_connection_goes_to_the_address_that_was_checked(tenant, settings, fake_dns):
    """One lookup per connection, and the socket goes to its (checked) answer: a resolver that
    would answer an internal address to a second lookup is never asked again."""
    settings.OUTBOX_ALLOWED_TARGET_NETWORKS = ["127.0.0.1/32"]
    good, good_server = start_receiver_on("127.0.0.1")
    internal, internal_server = start_receiver_on("127.0.0.2", port=good_server.server_address[1])
    try:
        port = good_server.server_address[1]
        fake_dns.set("pinned.example.test", ["127.0.0.1"])
        make_target(tenant, url=f"http://pinned.example.test:{port}/hook")
        fake_dns.calls.clear()
        fake_dns.set("pinned.example.test", ["127.0.0.1"], ["127.0.0.2"])
        publish(tenant)
        deliver_round()
        assert fake_dns.calls == ["pinned.example.test"]
        assert len(good.requests) == 1 and internal.requests == []
        assert good.requests[0].headers["host"] == f"pinned.example.test:{port}"
        assert Delivery.objects.get().status == "delivered"
    finally:
        for server in (good_server, internal_server):
            server.shutdown()
            server.server_close()


def test_redirects_are_not_followed(tenant, receiver):
    internal, internal_server = start_receiver_on("127.0.0.2")
    try:
        receiver.answer = lambda r, i: (302, {"location": internal.url}, "")
        make_target(tenant, url=receiver.url)
        publish(tenant)
        deliver_round()
        assert internal.requests == [] and len(receiver.requests) == 1
        delivery = Delivery.objects.get()
        assert (delivery.status, delivery.last_error) == ("retrying", "http_302")
    finally:
        internal_server.shutdown()
        internal_server.server_close()


# --- what tenants are told ------------------------------------------------------------------


def test_a_non_http_banner_never_reaches_the_tenant(tenant, api):
    """Port scanning through lastError: an SSH server's greeting came back verbatim."""
    server = banner_server()
    try:
        make_target(tenant, url=f"{server.url}/")
        event = publish(tenant)[0]
        deliver_round()
    finally:
        server.close()
    delivery = Delivery.objects.get()
    attempt = DeliveryAttempt.objects.get()
    assert delivery.last_error == attempt.error == "protocol_error"
    assert attempt.response_excerpt == ""
    body = api.get(f"/api/outbox/events/{event.id}").json()
    assert "SSH" not in str(body) and "OpenSSH" not in str(body)
    assert body["deliveries"][0]["lastError"] == "protocol_error"


def test_refused_and_timed_out_sends_name_a_fixed_code(tenant, receiver):
    from tests.outbox.helpers import free_port

    make_target(tenant, "down", url=f"http://127.0.0.1:{free_port()}/x")
    make_target(tenant, "slow", url=receiver.url, timeout_seconds=0.2)
    receiver.delay = 1.0
    publish(tenant)
    deliver_round()
    errors = dict(Delivery.objects.values_list("target__name", "last_error"))
    assert errors == {"down": "connection_refused", "slow": "timeout"}
    assert set(Delivery.objects.values_list("status", flat=True)) == {"retrying"}


def test_http_failures_are_http_codes_and_private_bodies_are_not_kept(tenant, receiver):
    receiver.answer = lambda r, i: (503, {}, "internal admin page: db=10.0.0.5 password=hunter2")
    make_target(tenant, url=receiver.url)
    publish(tenant)
    deliver_round()
    delivery = Delivery.objects.get()
    attempt = DeliveryAttempt.objects.get()
    assert (delivery.status, delivery.last_error, attempt.error) == (
        "retrying",
        "http_503",
        "http_503",
    )
    assert attempt.status_code == 503 and attempt.response_excerpt == ""


def test_a_public_receivers_body_is_kept_as_a_short_sanitised_excerpt(
    tenant, receiver, monkeypatch
):
    from outbox.delivery import egress

    monkeypatch.setattr(egress, "address_is_public", lambda address: True)
    receiver.answer = lambda r, i: (422, {}, "bad\x00field \x1b[31mred\x1b[0m\r\nnext " + "x" * 900)
    make_target(tenant, url=receiver.url)
    publish(tenant)
    deliver_round()
    attempt = DeliveryAttempt.objects.get()
    assert attempt.error == "http_422"
    excerpt = attempt.response_excerpt
    assert excerpt.startswith("bad\ufffdfield \ufffd[31mred\ufffd[0m next xxx")
    assert len(excerpt) <= 256 and "\n" not in excerpt and "\x1b" not in excerpt


def test_raw_request_line_is_origin_form_with_a_host_header(tenant):
    """`POST /path?query HTTP/1.1` to an origin, never the absolute-form meant for proxies."""
    server = start_raw_server(lambda data: b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
    try:
        make_target(tenant, url=f"{server.url}/in/hook?source=atlas&x=1")
        publish(tenant)
        deliver_round()
    finally:
        server.close()
    (request,) = server.received
    head = request.decode("latin-1").split("\r\n")
    assert head[0] == "POST /in/hook?source=atlas&x=1 HTTP/1.1"
    assert f"host: 127.0.0.1:{server.port}" in [line.lower() for line in head]
    assert Delivery.objects.get().status == "delivered"


def start_receiver_on(host, port=0):
    return start_receiver(host=host, port=port)


def deliver_to_two_names_on_one_certificate(tenant, fake_dns, tmp_path, monkeypatch):
    """A TLS receiver with a certificate for hooks.example.test; targets `good` (that name)
    and `wrong` (other.example.test), both resolving to it; one delivery round. Returns the
    receiver's requests, its port and the SNI names it was asked for."""
    from outbox.delivery import client

    cert, key = self_signed_certificate(tmp_path, "hooks.example.test")
    monkeypatch.setattr(client.certifi, "where", lambda: cert)
    receiver, server, sni = start_tls_receiver(cert, key)
    try:
        port = server.server_address[1]
        fake_dns.set("hooks.example.test", ["127.0.0.1"])
        fake_dns.set("other.example.test", ["127.0.0.1"])
        make_target(tenant, "good", url=f"https://hooks.example.test:{port}/hook")
        make_target(tenant, "wrong", url=f"https://other.example.test:{port}/hook")
        publish(tenant)
        deliver_round()
    finally:
        server.shutdown()
        server.server_close()
    return receiver.requests, port, sni


def test_https_goes_to_the_pinned_address_with_the_names_sni_and_certificate(
    tenant, settings, fake_dns, tmp_path, monkeypatch
):
    """The socket goes to the checked address; TLS still asks for, and verifies, the URL's
    host name (a certificate for another name fails as tls_error, nothing is sent)."""
    settings.OUTBOX_ALLOWED_TARGET_NETWORKS = ["127.0.0.1/32"]
    requests, port, sni = deliver_to_two_names_on_one_certificate(
        tenant, fake_dns, tmp_path, monkeypatch
    )
    assert len(requests) == 1
    assert requests[0].headers["host"] == f"hooks.example.test:{port}"
    assert sorted(sni) == ["hooks.example.test", "other.example.test"]
    errors = dict(Delivery.objects.values_list("target__name", "last_error"))
    assert errors == {"good": "", "wrong": "tls_error"}
