"""An open SSE stream follows its key: revoking the key or deactivating its tenant ends the
stream within 5 s (NOTIFY at commit), and a keep-alive re-check catches a revocation whose
announcement was missed. Real uvicorn process, real SSE clients."""

import time

import pytest

from tenants import keycache
from tenants.models import ApiKey
from tenants.services import apikey_revoke, tenant_deactivate
from tests.factories import make_api_key
from tests.outbox.factories import publish
from tests.outbox.sse import Stream, asgi_server

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

EMAIL_PAYLOAD = {"email": "visitor@example.test", "firstName": "Ada"}


@pytest.fixture
def asgi_url():
    with asgi_server() as url:
        yield url


def open_stream(url, key, **options) -> Stream:
    stream = Stream(url, key, read_timeout=6, **options)
    stream.wait_connected()
    assert stream.connected
    return stream


def ended_without_events(stream: Stream) -> tuple[bool, float, list]:
    """Read until the stream ends (at most 6 s); the events it still received meanwhile."""
    started = time.monotonic()
    events = stream.take(1000, within=6)
    return stream.ended, time.monotonic() - started, events


def key_row(raw: str) -> ApiKey:
    return ApiKey.objects.get(key_hash=keycache.key_digest(raw))


def test_revoking_a_key_ends_its_open_streams_and_nothing_reaches_them_after(asgi_url, tenant):
    revoked, kept = make_api_key(tenant, "secret"), make_api_key(tenant, "secret")
    streams = [open_stream(asgi_url, revoked), open_stream(asgi_url, revoked)]
    other = open_stream(asgi_url, kept)
    before = publish(tenant)[0]
    assert [s.take(1)[0]["id"] for s in (*streams, other)] == [str(before.id)] * 3

    apikey_revoke(key=key_row(revoked))
    after = publish(tenant, event_type="assessment.submitted", payload=EMAIL_PAYLOAD)[0]

    for stream in streams:
        ended, waited, events = ended_without_events(stream)
        assert ended and waited < 5, (ended, waited)
        assert events == []  # the submission with an email never reached the revoked key
        stream.close()
    assert other.take(1)[0]["id"] == str(after.id)  # another key of the tenant: unaffected
    other.close()
    assert Stream(asgi_url, revoked).response.status_code == 401


def test_deactivating_a_tenant_ends_every_stream_of_its_keys(asgi_url, tenant, other_tenant):
    first, second = make_api_key(tenant, "secret"), make_api_key(tenant, "secret")
    neighbour_key = make_api_key(other_tenant, "secret")
    mine = [open_stream(asgi_url, first), open_stream(asgi_url, second)]
    neighbour = open_stream(asgi_url, neighbour_key)

    tenant_deactivate(tenant=tenant)
    publish(tenant, event_type="assessment.submitted", payload=EMAIL_PAYLOAD)
    theirs = publish(other_tenant)[0]

    for stream in mine:
        ended, waited, events = ended_without_events(stream)
        assert ended and waited < 5 and events == [], (ended, waited, events)
        stream.close()
    assert neighbour.take(1)[0]["id"] == str(theirs.id)
    neighbour.close()
    refused = Stream(asgi_url, first).response
    assert (refused.status_code, refused.json()["error"]["code"]) == (401, "tenant_inactive")


def test_the_keep_alive_recheck_ends_a_stream_whose_revocation_was_not_announced(tenant):
    """No NOTIFY (e.g. the hub's LISTEN connection was down at that moment): the stream
    re-checks its key at each keep-alive and ends at the first one after the revocation."""
    with asgi_server(OUTBOX_REALTIME_KEEPALIVE_SECONDS="1") as url:
        raw = make_api_key(tenant, "secret")
        stream = open_stream(url, raw)
        key = key_row(raw)
        ApiKey.objects.filter(pk=key.pk).update(revoked_at="2024-01-01T00:00Z")
        keycache.cache_invalidate([key.key_hash])  # what the revoke service does, minus NOTIFY
        ended, waited, events = ended_without_events(stream)
        stream.close()
    assert ended and waited < 3 and events == [], (ended, waited, events)
