import pytest
from django.db import connection, transaction

from core.api.errors import http_status_for
from core.errors import DomainError
from outbox.models import Delivery, OutboxEvent
from outbox.services import event_publish
from tests.outbox.factories import make_target, publish

pytestmark = pytest.mark.django_db


def test_rolled_back_transaction_publishes_nothing(tenant):
    make_target(tenant)
    with pytest.raises(RuntimeError), transaction.atomic():
        event_publish(tenant=tenant, event_type="a.b", topic="t", payload={"x": 1})
        raise RuntimeError("business write failed")
    assert OutboxEvent.objects.count() == 0
    assert Delivery.objects.count() == 0


def test_repeated_idempotency_key_returns_the_original_event(tenant):
    make_target(tenant)
    first = publish(tenant, idempotency_key="order-1", payload={"v": 1})[0]
    again = publish(tenant, idempotency_key="order-1", payload={"v": 2})[0]
    assert again.id == first.id
    assert again.payload == {"v": 1}
    assert OutboxEvent.objects.count() == 1
    assert Delivery.objects.count() == 1


def test_same_key_in_two_tenants_is_two_events(tenant, other_tenant):
    publish(tenant, idempotency_key="k")
    publish(other_tenant, idempotency_key="k")
    assert OutboxEvent.objects.count() == 2


def test_event_fans_out_to_every_enabled_target(tenant, other_tenant):
    make_target(tenant, "a")
    make_target(tenant, "b")
    disabled = make_target(tenant, "c")
    disabled.is_enabled = False
    disabled.save()
    make_target(other_tenant, "a")
    event = publish(tenant)[0]
    names = sorted(Delivery.objects.filter(event=event).values_list("target__name", flat=True))
    assert names == ["a", "b"]


def test_explicit_target_gets_the_only_delivery(tenant):
    make_target(tenant, "a")
    make_target(tenant, "b")
    event = publish(tenant, target="b")[0]
    assert list(Delivery.objects.filter(event=event).values_list("target__name", flat=True)) == [
        "b"
    ]


def test_unknown_target_is_refused_and_writes_nothing(tenant, other_tenant):
    make_target(other_tenant, "theirs")
    with pytest.raises(DomainError) as info:
        publish(tenant, target="theirs")
    assert info.value.code == "unknown_target"
    assert OutboxEvent.objects.count() == 0


@pytest.mark.parametrize("payload", [[1, 2], "text", 3, None])
def test_non_object_payload_is_refused(tenant, payload):
    with pytest.raises(DomainError) as info:
        publish(tenant, payload=payload)
    assert info.value.code == "payload_not_object"
    assert OutboxEvent.objects.count() == 0


@pytest.mark.parametrize(
    "payload", [{"note": "a\x00b"}, {"deep": [{"k\x00": 1}]}, {"half": "\ud800"}]
)
def test_text_postgresql_cannot_store_is_a_4xx_from_code_too(tenant, payload):
    with pytest.raises(DomainError) as info:
        publish(tenant, payload=payload)
    assert (info.value.code, http_status_for(info.value)) == ("unstorable_text", 400)
    assert OutboxEvent.objects.count() == 0


def test_valid_non_ascii_and_a_literal_backslash_u0000_are_stored(tenant):
    payload = {"emoji": "😀", "text": "\\u0000 is how JSON spells NUL"}
    (event,) = publish(tenant, payload=payload)
    assert OutboxEvent.objects.get(pk=event.id).payload == payload


def test_oversized_payload_is_refused(tenant, settings):
    settings.OUTBOX_MAX_PAYLOAD_BYTES = 1000
    with pytest.raises(DomainError) as info:
        publish(tenant, payload={"blob": "x" * 1000})
    assert (info.value.code, http_status_for(info.value)) == ("payload_too_large", 413)


def test_publish_returns_a_saved_event_with_increasing_seq(tenant):
    first, second = publish(tenant, n=2)
    stored = OutboxEvent.objects.get(pk=first.id)
    assert stored.seq == first.seq and second.seq > first.seq
    assert stored.payload == first.payload


@pytest.mark.django_db(transaction=True)
def test_notify_is_sent_on_commit_only(tenant):
    listener = connection.get_new_connection(connection.get_connection_params())
    listener.autocommit = True
    listener.execute("LISTEN outbox_events")
    try:
        with pytest.raises(RuntimeError), transaction.atomic():
            event_publish(tenant=tenant, event_type="a.b", topic="t", payload={})
            raise RuntimeError
        assert list(listener.notifies(timeout=0.3)) == []
        event = publish(tenant)[0]
        got = [n.payload for n in listener.notifies(timeout=2, stop_after=1)]
        assert got == [str(event.seq)]
    finally:
        listener.close()


@pytest.mark.django_db(transaction=True)
def test_realtime_target_delivery_broadcasts_a_notify(tenant):
    from tests.outbox.factories import make_target
    from tests.outbox.helpers import deliver_round

    make_target(tenant, "live", kind="realtime", url="")
    event = publish(tenant)[0]
    listener = connection.get_new_connection(connection.get_connection_params())
    listener.autocommit = True
    listener.execute("LISTEN outbox_realtime")
    try:
        deliver_round()
        got = [n.payload for n in listener.notifies(timeout=2, stop_after=1)]
    finally:
        listener.close()
    assert got == [f'{{"tenant": "{tenant.id}", "seq": {event.seq}}}']
    assert Delivery.objects.get().status == "delivered"
