"""SSE ids are opaque: a tenant's consecutive ids say nothing about how many events other
tenants published in between, and Last-Event-ID still resumes exactly (real uvicorn)."""

import pytest
import requests

from outbox.realtime import event_ids
from tests.factories import make_api_key
from tests.outbox.factories import publish
from tests.outbox.sse import Stream, asgi_server
from tests.tenancy import assert_error

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture
def asgi_url():
    with asgi_server() as url:
        yield url


def test_ids_hide_other_tenants_volume_and_still_resume_exactly(asgi_url, tenant, other_tenant):
    key = make_api_key(tenant, "secret")
    stream = Stream(asgi_url, key)
    stream.wait_connected()
    mine = []
    for burst in (3, 1, 7, 2):  # the other tenant's volume between two of mine varies
        mine += publish(tenant)
        publish(other_tenant, n=burst)
    mine += publish(tenant)
    seen = stream.take(5)
    stream.close()
    assert [e["id"] for e in seen] == [str(m.id) for m in mine]
    ids = [e["lastEventId"] for e in seen]
    # not numbers: two of mine no longer tell how many events others published in between
    assert not any(i.isdigit() for i in ids)
    assert len({len(i) for i in ids}) == 1 and len(set(ids)) == 5
    # the server (and only the server) maps them back to the global sequence
    assert [event_ids.decode(i) for i in ids] == [m.seq for m in mine]

    # resuming from the second id gets exactly the three events after it
    more = publish(tenant, n=2)
    publish(other_tenant, n=4)
    resumed = Stream(asgi_url, key, last_event_id=ids[1])
    resumed.wait_connected()
    got = resumed.take(5)
    resumed.close()
    assert [e["id"] for e in got] == [str(m.id) for m in mine[2:] + more]
    # and ?lastEventId= (for clients that cannot set headers) does the same
    by_param = Stream(asgi_url, key, params={"lastEventId": ids[3]})
    assert [e["id"] for e in by_param.take(3)] == [str(m.id) for m in mine[4:] + more]
    by_param.close()


@pytest.mark.parametrize(
    "garbage",
    ["12", "0", "-1", "abc", "A" * 22, "x" * 500, "not an id at all"],
)
def test_a_last_event_id_this_server_did_not_give_is_400(asgi_url, tenant, garbage):
    key = make_api_key(tenant, "secret")
    response = requests.get(
        f"{asgi_url}/api/realtime/stream",
        headers={"Authorization": f"Bearer {key}", "Last-Event-ID": garbage},
        timeout=5,
    )
    assert_error(response, 400, "invalid_last_event_id")


def test_an_altered_id_is_refused_not_read_as_a_nearby_cursor():
    good = event_ids.encode(1234)
    for position in range(len(good)):
        flipped = good[:position] + ("B" if good[position] != "B" else "C") + good[position + 1 :]
        assert event_ids.decode(flipped) is None, position
    assert event_ids.decode(good) == 1234


def test_ids_survive_a_secret_key_rotation_through_the_fallbacks(settings):
    issued = event_ids.encode(41)
    settings.SECRET_KEY_FALLBACKS = [settings.SECRET_KEY]
    settings.SECRET_KEY = "a-new-secret-key-" + "x" * 40
    assert event_ids.encode(41) != issued
    assert event_ids.decode(issued) == 41
    settings.SECRET_KEY_FALLBACKS = []
    assert event_ids.decode(issued) is None
