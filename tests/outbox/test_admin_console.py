"""The admin as an Atlas operations console: its name, the events' status column and filter,
indented payloads, no Save buttons where nothing can be saved, readable delivery links, human
durations and sizes."""

import pytest
from django.contrib.auth.models import User

from core.admin import human_bytes, human_duration
from outbox.models import Delivery, OutboxEvent, Target
from tests.outbox.factories import make_target, publish

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client(client):
    user = User.objects.create_superuser("ops", "ops@example.test", "pw-123456")
    client.force_login(user)
    return client


@pytest.fixture
def events(tenant):
    """One event per status: delivered, dead, pending, cancelled, no targets, retrying."""
    make_target(tenant, "hook")
    made = {}
    for status in ("delivered", "dead", "pending", "cancelled", "retrying"):
        event = publish(tenant, event_type=f"thing.{status}", payload={"s": status})[0]
        Delivery.objects.filter(event=event).update(status=status)
        made[status] = event
    make_target(tenant, "second")
    mixed = publish(tenant, event_type="thing.mixed")[0]  # one dead, one delivered: dead
    Delivery.objects.filter(event=mixed, target__name="hook").update(status="dead")
    Delivery.objects.filter(event=mixed, target__name="second").update(status="delivered")
    made["mixed"] = mixed
    Target.objects.update(is_enabled=False)
    made["no_targets"] = publish(tenant, event_type="thing.none")[0]
    return made


def test_the_console_has_its_own_name(staff_client):
    page = staff_client.get("/admin/").content.decode()
    assert "Atlas operations console" in page and "<title>" in page
    assert "Django administration" not in page
    assert "Atlas console" in page  # the browser tab's title


@pytest.mark.parametrize(
    "status, expected",
    [
        ("dead", {"thing.dead", "thing.mixed"}),
        ("retrying", {"thing.retrying"}),
        ("pending", {"thing.pending"}),
        ("cancelled", {"thing.cancelled"}),
        ("delivered", {"thing.delivered"}),
        ("no_targets", {"thing.none"}),
    ],
)
def test_the_events_status_filter_follows_the_worst_delivery(
    staff_client, events, status, expected
):
    page = staff_client.get(f"/admin/outbox/outboxevent/?status={status}")
    listed = {e.event_type for e in page.context["cl"].result_list}
    assert listed == expected


def test_the_events_list_shows_each_events_status(staff_client, events):
    page = staff_client.get("/admin/outbox/outboxevent/").content.decode()
    assert page.count('class="atlas-status dead"') == 2
    assert 'class="atlas-status no_targets">no targets<' in page


def test_an_event_page_has_indented_payload_readable_links_and_no_save(staff_client, events):
    event = events["mixed"]
    OutboxEvent.objects.filter(pk=event.pk).update(payload={"email": "a@b.test", "n": [1, 2]})
    page = staff_client.get(f"/admin/outbox/outboxevent/{event.pk}/change/").content.decode()
    assert '<pre class="atlas-json">{\n  &quot;email&quot;: &quot;a@b.test&quot;' in page
    assert 'name="_save"' not in page and 'name="_continue"' not in page
    delivery = Delivery.objects.get(event=event, target__name="hook")
    assert f'href="/admin/outbox/delivery/{delivery.pk}/change/">thing.mixed → hook</a>' in page
    assert f'href="/admin/outbox/target/{delivery.target_id}/change/">hook (webhook)</a>' in page


def test_a_delivery_page_has_no_save_button_and_links_its_event(staff_client, events):
    delivery = Delivery.objects.filter(event=events["dead"]).get()
    page = staff_client.get(f"/admin/outbox/delivery/{delivery.pk}/change/").content.decode()
    assert 'name="_save"' not in page
    listing = staff_client.get("/admin/outbox/delivery/").content.decode()
    assert f'href="/admin/outbox/outboxevent/{events["dead"].pk}/change/">thing.dead</a>' in listing


def test_a_target_page_stays_editable(staff_client, events):
    target = Target.objects.get(name="hook")
    page = staff_client.get(f"/admin/outbox/target/{target.pk}/change/").content.decode()
    assert 'name="_save"' in page


@pytest.mark.parametrize(
    "seconds, text",
    [
        (None, "—"),
        (0.0123, "12 ms"),
        (5.25, "5.2 s"),
        (42, "42 s"),
        (95, "1 min 35 s"),
        (3600, "1 h"),
        (7300, "2 h 1 min"),
        (200000, "2 d 7 h"),
    ],
)
def test_human_durations(seconds, text):
    assert human_duration(seconds) == text


@pytest.mark.parametrize(
    "size, text",
    [(None, "—"), (0, "0 bytes"), (1023, "1023 bytes"), (1536, "1.5 KB"), (52428800, "50.0 MB")],
)
def test_human_sizes(size, text):
    assert human_bytes(size) == text
