"""The realtime stream opened with a token (?token=rt_…), as a browser's EventSource does:
real uvicorn process, real SSE clients. Attack tests first: each refusal has its code."""

import time

import pytest
import requests

from outbox.realtime import tokens
from tenants import keycache
from tenants.models import ApiKey
from tenants.services import apikey_revoke, tenant_deactivate
from tests.factories import make_api_key
from tests.outbox.factories import publish
from tests.outbox.sse import Stream, asgi_server

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

ORIGIN = "https://app.example.test"


@pytest.fixture
def asgi_url():
    with asgi_server() as url:
        yield url


def key_row(raw: str) -> ApiKey:
    return ApiKey.objects.get(key_hash=keycache.key_digest(raw))


def mint(url, secret_key, **body) -> str:
    """Through the real endpoint, as a tenant's server would."""
    response = requests.post(
        f"{url}/api/realtime/tokens",
        json=body,
        headers={"Authorization": f"Bearer {secret_key}"},
        timeout=10,
    )
    assert response.status_code == 201, response.text
    return response.json()["token"]


def refused(url, token, **headers):
    response = requests.get(
        f"{url}/api/realtime/stream", params={"token": token}, headers=headers, timeout=10
    )
    return response.status_code, response.json()["error"]["code"]


def opened(url, token, read_timeout=6, **options) -> Stream:
    stream = Stream(url, None, token=token, read_timeout=read_timeout, **options)
    assert stream.response.status_code == 200, stream.response.text
    stream.wait_connected()
    assert stream.connected
    return stream


def test_a_token_sees_only_its_tenant_and_its_scope(asgi_url, tenant, other_tenant):
    secret = make_api_key(tenant, "secret")
    make_api_key(tenant, "publishable", origins=[ORIGIN])
    token = mint(asgi_url, secret, topics=["payments"], eventTypes=["payment.*"])
    stream = opened(asgi_url, token, origin=ORIGIN)
    publish(other_tenant, topic="payments", event_type="payment.completed")  # B's event
    publish(tenant, topic="assessments", event_type="assessment.submitted")  # other topic
    publish(tenant, topic="payments", event_type="refund.created")  # other event type
    wanted = publish(tenant, topic="payments", event_type="payment.completed")[0]
    got = stream.take(1)
    stream.close()
    assert [(e["id"], e["tenantId"]) for e in got] == [(str(wanted.id), str(tenant.id))]
    assert stream.event_names == [None]  # EventSource's onmessage gets every event


def test_a_session_token_sees_only_that_session(asgi_url, tenant):
    secret = make_api_key(tenant, "secret")
    mine, theirs = "1b4e28ba-2fa1-11d2-883f-0016d3cca427", "2b4e28ba-2fa1-11d2-883f-0016d3cca427"
    stream = opened(asgi_url, mint(asgi_url, secret, sessionId=mine))
    publish(tenant, event_type="assessment.submitted", payload={"sessionId": theirs})
    wanted = publish(tenant, event_type="upload.stored", payload={"assessmentSessionId": mine})
    got = stream.take(1)
    stream.close()
    assert [e["id"] for e in got] == [str(wanted[0].id)]


def test_last_event_id_resumes_within_the_scope(asgi_url, tenant):
    secret = make_api_key(tenant, "secret")
    token = mint(asgi_url, secret, eventTypes=["keep.*"])
    first = opened(asgi_url, token)
    publish(tenant, event_type="keep.one")
    seen = first.take(1)
    first.close()
    publish(tenant, event_type="drop.me")
    missed = publish(tenant, event_type="keep.two")  # while disconnected
    resumed = opened(asgi_url, token, last_event_id=seen[0]["lastEventId"])
    live = publish(tenant, event_type="keep.three")
    got = resumed.take(2)
    resumed.close()
    assert [e["id"] for e in got] == [str(missed[0].id), str(live[0].id)]


def test_an_expired_token_ends_the_stream_with_token_expired(asgi_url, tenant):
    secret = make_api_key(tenant, "secret")
    token, _scope = tokens.token_create(tenant_id=str(tenant.id), key_id=key_row(secret).pk, ttl=10)
    stream = opened(asgi_url, token, read_timeout=20)  # silent until the expiry
    started = time.monotonic()
    assert stream.take(1, within=14) == []
    stream.close()
    assert stream.ended and time.monotonic() - started < 13
    assert stream.signals == [("token_expired", {"code": "realtime_token_expired"})]
    assert refused(asgi_url, token) == (401, "realtime_token_expired")


def test_revoking_the_minting_key_ends_token_streams(asgi_url, tenant):
    secret = make_api_key(tenant, "secret")
    token = mint(asgi_url, secret)
    stream = opened(asgi_url, token)
    apikey_revoke(key=key_row(secret))
    publish(tenant, event_type="assessment.submitted", payload={"email": "a@example.test"})
    started = time.monotonic()
    events = stream.take(10, within=6)
    stream.close()
    assert stream.ended and events == [] and time.monotonic() - started < 5
    assert stream.signals == [("access_revoked", {"code": "api_key_revoked"})]
    assert refused(asgi_url, token) == (401, "api_key_revoked")


def test_deactivating_the_tenant_ends_token_streams(asgi_url, tenant):
    secret = make_api_key(tenant, "secret")
    token = mint(asgi_url, secret)
    stream = opened(asgi_url, token)
    tenant_deactivate(tenant=tenant)
    publish(tenant)
    assert stream.take(10, within=6) == [] and stream.ended
    stream.close()
    assert stream.signals == [("access_revoked", {"code": "tenant_inactive"})]
    assert refused(asgi_url, token) == (401, "tenant_inactive")


def test_the_keep_alive_recheck_catches_a_deleted_key(tenant):
    """No NOTIFY at all (a key row deleted by hand): the next keep-alive re-check ends it."""
    with asgi_server(OUTBOX_REALTIME_KEEPALIVE_SECONDS="1") as url:
        secret = make_api_key(tenant, "secret")
        stream = opened(url, mint(url, secret))
        ApiKey.objects.filter(pk=key_row(secret).pk).delete()
        assert stream.take(10, within=4) == [] and stream.ended
        stream.close()
    assert stream.signals == [("access_revoked", {"code": "invalid_api_key"})]


def test_attacks_are_refused_with_codes(asgi_url, tenant, other_tenant):
    secret = make_api_key(tenant, "secret")
    make_api_key(tenant, "publishable", origins=[ORIGIN])
    make_api_key(other_tenant, "publishable", origins=["https://evil.example.test"])
    token = mint(asgi_url, secret, topics=["payments"])
    # tampered: one character of the signature changed
    assert refused(asgi_url, token[:-1] + ("A" if token[-1] != "A" else "B")) == (
        401,
        "invalid_realtime_token",
    )
    # a scope it was not given
    response = requests.get(
        f"{asgi_url}/api/realtime/stream",
        params={"token": token, "topic": "assessments"},
        timeout=10,
    )
    assert (response.status_code, response.json()["error"]["code"]) == (403, "topic_not_in_token")
    # an origin another tenant allows, not this one
    assert refused(asgi_url, token, Origin="https://evil.example.test") == (
        403,
        "origin_not_allowed",
    )
    # a secret key where the token goes
    assert refused(asgi_url, secret) == (400, "secret_key_in_url")
    # a publishable key cannot mint one
    pk = make_api_key(tenant, "publishable", origins=[ORIGIN])
    minted = requests.post(
        f"{asgi_url}/api/realtime/tokens",
        json={},
        headers={"Authorization": f"Bearer {pk}", "Origin": ORIGIN},
        timeout=10,
    )
    assert (minted.status_code, minted.json()["error"]["code"]) == (403, "secret_key_required")


def test_an_allowed_origin_gets_cors_headers(asgi_url, tenant):
    secret = make_api_key(tenant, "secret")
    make_api_key(tenant, "publishable", origins=[ORIGIN])
    stream = opened(asgi_url, mint(asgi_url, secret), origin=ORIGIN)
    assert stream.response.headers["Access-Control-Allow-Origin"] == ORIGIN
    stream.close()
