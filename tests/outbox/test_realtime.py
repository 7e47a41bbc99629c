"""SSE against a real uvicorn process on 127.0.0.1 (the way the stream is served)."""

import time

import pytest
import requests

from outbox.realtime import event_ids
from tenants import rls
from tests.factories import make_api_key
from tests.outbox import sse
from tests.outbox.factories import make_target, publish
from tests.outbox.sse import asgi_server
from tests.tenancy import assert_error, in_this_scope

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture
def asgi_url():
    # a long safety valve: holes must resolve by their transaction ending, not a timer
    with asgi_server(OUTBOX_REALTIME_SETTLE_SECONDS="60") as url:
        yield url


class Stream(sse.Stream):
    def take(self, count, within=None) -> list[dict]:
        """Events with `seq`: the global sequence behind the opaque id (decoded here)."""
        events = super().take(count, within)
        return [{**e, "seq": event_ids.decode(e["lastEventId"])} for e in events]


def test_stream_carries_own_tenant_events_with_topic_filter(asgi_url, tenant, other_tenant):
    key = make_api_key(tenant, "secret")
    everything = Stream(asgi_url, key)
    payments = Stream(asgi_url, key, params={"topic": "payments"})
    everything.wait_connected()
    payments.wait_connected()
    publish(other_tenant, topic="payments")
    mine = publish(tenant, topic="assessments") + publish(tenant, topic="payments")
    got = everything.take(2)
    assert [(e["seq"], e["id"]) for e in got] == [(m.seq, str(m.id)) for m in mine]
    assert [e["tenantId"] for e in got] == [str(tenant.id)] * 2
    assert got[1]["payload"] == {"n": 0} and got[1]["eventType"] == "thing.happened"
    assert [e["topic"] for e in payments.take(1)] == ["payments"]
    everything.close()
    payments.close()


def test_last_event_id_resumes_without_gaps(asgi_url, tenant):
    key = make_api_key(tenant, "secret")
    first = Stream(asgi_url, key)
    first.wait_connected()
    published = publish(tenant, n=2)
    seen = first.take(2)
    first.close()
    published += publish(tenant, n=3)  # while disconnected
    resumed = Stream(asgi_url, key, last_event_id=seen[-1]["lastEventId"])
    resumed.wait_connected()
    published += publish(tenant, n=1)  # live after the replay
    rest = resumed.take(4)
    resumed.close()
    assert [e["id"] for e in seen + rest] == [str(e.id) for e in published]
    assert [e["seq"] for e in rest] == [e.seq for e in published[2:]]


def test_stream_refuses_missing_and_publishable_keys(asgi_url, tenant):
    no_key = requests.get(f"{asgi_url}/api/realtime/stream", timeout=5)
    assert no_key.status_code == 401
    assert no_key.json()["error"]["code"] == "authentication_required"
    pk = make_api_key(tenant, "publishable")
    public = requests.get(
        f"{asgi_url}/api/realtime/stream", headers={"Authorization": f"Bearer {pk}"}, timeout=5
    )
    assert (public.status_code, public.json()["error"]["code"]) == (403, "secret_key_required")


def test_under_wsgi_the_stream_says_where_it_is_served(api):
    assert_error(api.get("/api/realtime/stream"), 501, "realtime_needs_asgi")


def test_many_open_streams_leave_the_server_responsive(asgi_url, tenant):
    key = make_api_key(tenant, "secret")
    make_target(tenant, "live", kind="realtime", url="")
    streams = [Stream(asgi_url, key) for _ in range(60)]
    for stream in streams:
        stream.wait_connected()
    api = requests.get(
        f"{asgi_url}/api/outbox/targets", headers={"Authorization": f"Bearer {key}"}, timeout=10
    )
    assert api.status_code == 200 and api.json()["results"][0]["name"] == "live"
    event = publish(tenant)[0]
    assert all(s.take(1)[0]["id"] == str(event.id) for s in streams)
    for stream in streams:
        stream.close()


def _publish_in_a_held_transaction(tenant, *, hold: float, rollback: bool):
    """Publish in a thread whose transaction stays open `hold` s, then commits or rolls back."""
    import threading

    from django.db import connections, transaction

    holding, held = threading.Event(), []

    def run():
        try:
            with transaction.atomic():
                held.extend(publish(tenant, n=1, payload={"slow": True}))
                holding.set()
                time.sleep(hold)
                if rollback:
                    raise RuntimeError("rolled back on purpose")
        except RuntimeError:
            pass
        finally:
            connections.close_all()

    thread = threading.Thread(target=in_this_scope(run))
    thread.start()
    assert holding.wait(10)
    return thread, held


def test_an_event_committed_late_is_not_skipped(asgi_url, tenant):
    """A transaction that took its seq first but commits last - here 6 s later, longer than
    any timer-based guess would wait - still reaches the stream, in seq order."""
    key = make_api_key(tenant, "secret")
    stream = Stream(asgi_url, key)
    stream.wait_connected()
    thread, slow = _publish_in_a_held_transaction(tenant, hold=6.0, rollback=False)
    fast = publish(tenant, n=1, payload={"fast": True})[0]
    thread.join()
    got = stream.take(2)
    stream.close()
    assert [e["id"] for e in got] == [str(slow[0].id), str(fast.id)]
    assert slow[0].seq < fast.seq
    # and a client resuming from before both gets both, in the same order
    resumed = Stream(asgi_url, key, last_event_id=event_ids.encode(slow[0].seq - 1))
    assert [e["id"] for e in resumed.take(2)] == [str(slow[0].id), str(fast.id)]
    resumed.close()


def test_a_hole_from_a_rollback_is_passed_as_soon_as_the_transaction_ends(asgi_url, tenant):
    """The seq a rollback burnt is a hole for good; the hub sees the transaction end and moves
    on at once (the safety valve is 60 s here; the stream's read timeout is 10 s)."""
    key = make_api_key(tenant, "secret")
    stream = Stream(asgi_url, key)
    stream.wait_connected()
    thread, _gone = _publish_in_a_held_transaction(tenant, hold=1.5, rollback=True)
    after = publish(tenant, n=1)[0]
    started = time.monotonic()
    got = stream.take(1)
    waited = time.monotonic() - started
    thread.join()
    stream.close()
    assert [e["id"] for e in got] == [str(after.id)]
    assert waited < 8, waited


def test_streams_survive_the_hub_losing_its_database_connections(asgi_url, tenant):
    """The hub's LISTEN and query connections are killed (as in a PostgreSQL restart): open
    streams stay open and get the next event once the hub has reconnected."""
    from django.db import connection

    key = make_api_key(tenant, "secret")
    stream = Stream(asgi_url, key)
    stream.wait_connected()
    before = publish(tenant)[0]
    assert stream.take(1)[0]["id"] == str(before.id)
    # the hub's connections log in as the owner: only the owner may end them
    with rls.owner_mode(connection), connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        assert cursor.fetchone()[0] >= 2  # at least the hub's LISTEN and pump connections
    time.sleep(0.5)
    after = publish(tenant)[0]
    assert stream.take(1)[0]["id"] == str(after.id)
    stream.close()
