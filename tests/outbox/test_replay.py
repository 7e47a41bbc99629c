"""Replay: POST /api/outbox/targets/{id}/replay, the admin action and outbox_requeue's
filters. Re-queues a target's deliveries in a window and back-fills the ones it never had."""

from datetime import timedelta
from io import StringIO

import pytest
from django.contrib.auth.models import Permission
from django.core.management import call_command
from django.utils import timezone

from outbox import replay
from outbox.models import Delivery, OutboxEvent, ReplayRequest, Target
from tests.outbox.factories import make_target, publish
from tests.outbox.helpers import deliver_round
from tests.tenancy import assert_error

pytestmark = pytest.mark.django_db


def _window(**extra):
    now = timezone.now()
    return {"since": (now - timedelta(hours=1)).isoformat(), "until": now.isoformat(), **extra}


def _url(ref):
    return f"/api/outbox/targets/{ref}/replay"


def _dead_deliveries(tenant, n=3, name="hook", **options):
    target = make_target(tenant, name, **options)
    publish(tenant, n=n)
    Delivery.objects.filter(target=target).update(status="dead", attempts=8, last_error="http_500")
    return target


def test_replay_requeues_dead_deliveries_of_the_window(api, tenant):
    target = _dead_deliveries(tenant, n=3)
    old = Delivery.objects.filter(target=target).first()
    OutboxEvent.objects.filter(pk=old.event_id).update(
        created_at=timezone.now() - timedelta(days=2)
    )
    response = api.post(_url(target.id), _window(), format="json")
    assert response.status_code == 202, response.json()
    body = response.json()
    assert (body["requeued"], body["backfilled"], body["count"], body["capped"]) == (2, 0, 2, False)
    assert body["target"] == "hook"
    rows = Delivery.objects.filter(target=target)
    assert sorted(rows.values_list("status", "attempts")) == [
        ("dead", 8),  # outside the window
        ("pending", 0),
        ("pending", 0),
    ]


def test_replay_by_name_with_a_status_sends_delivered_ones_again(api, tenant, receiver):
    make_target(tenant, "hook", url=receiver.url)
    publish(tenant, n=2)
    deliver_round()
    assert Delivery.objects.filter(status="delivered").count() == 2
    body = api.post(_url("hook"), _window(status="delivered"), format="json").json()
    assert body["requeued"] == 2
    deliver_round()
    assert len(receiver.requests) == 4  # the same two events, again (same webhook-id)
    assert len(set(receiver.ids())) == 2


def test_same_idempotency_key_and_body_answers_again_without_requeueing(api, tenant):
    target = _dead_deliveries(tenant, n=2)
    window = _window()
    first = api.post(_url("hook"), window, format="json", HTTP_IDEMPOTENCY_KEY="r-1")
    Delivery.objects.filter(target=target).update(status="dead")  # died again meanwhile
    again = api.post(_url("hook"), window, format="json", HTTP_IDEMPOTENCY_KEY="r-1")
    assert again.status_code == 202 and again.json() == first.json()
    assert Delivery.objects.filter(status="dead").count() == 2  # not requeued a second time
    other = api.post(
        _url("hook"), _window(status="dead"), format="json", HTTP_IDEMPOTENCY_KEY="r-1"
    )
    assert_error(other, 422, "idempotency_key_reused")
    assert ReplayRequest.objects.count() == 1
    _a_while_later()
    fresh = api.post(_url("hook"), window, format="json", HTTP_IDEMPOTENCY_KEY="r-2")
    assert fresh.json()["requeued"] == 2


def _a_while_later():
    """Past the one-replay-per-minute limit of a target."""
    ReplayRequest.objects.update(created_at=timezone.now() - replay.MIN_INTERVAL)


def test_a_retry_without_until_gets_the_first_answer(api, tenant):
    target = _dead_deliveries(tenant, n=2)
    since = {"since": (timezone.now() - timedelta(hours=1)).isoformat()}
    first = api.post(_url("hook"), since, format="json", HTTP_IDEMPOTENCY_KEY="r-1")
    Delivery.objects.filter(target=target).update(status="dead")
    again = api.post(_url("hook"), since, format="json", HTTP_IDEMPOTENCY_KEY="r-1")
    assert again.status_code == 202 and again.json() == first.json()
    assert Delivery.objects.filter(status="dead").count() == 2


def test_a_target_is_replayed_at_most_once_a_minute_through_the_api(api, tenant):
    """A loop of replays would be unlimited outbound traffic from one secret key."""
    target = _dead_deliveries(tenant, n=2)
    assert api.post(_url("hook"), _window(), format="json").status_code == 202
    Delivery.objects.filter(target=target).update(status="dead")
    refused = api.post(_url("hook"), _window(), format="json")
    assert_error(refused, 429, "replay_rate_limited")
    assert refused.json()["error"]["details"]["retryAfterSeconds"] > 0
    assert Delivery.objects.filter(status="dead").count() == 2  # nothing requeued
    assert ReplayRequest.objects.count() == 1
    _a_while_later()
    assert api.post(_url("hook"), _window(), format="json").json()["requeued"] == 2


def test_a_target_created_later_is_back_filled_by_its_subscriptions(api, tenant, receiver):
    make_target(tenant, "old")
    publish(tenant, n=2, event_type="payment.completed")
    publish(tenant, n=1, event_type="upload.stored")
    late = make_target(tenant, "late", url=receiver.url, event_types=["payment.*"])
    body = api.post(_url("late"), _window(), format="json").json()
    assert (body["requeued"], body["backfilled"]) == (0, 2)
    assert Delivery.objects.filter(target=late).count() == 2
    _a_while_later()
    again = api.post(_url("late"), _window(), format="json").json()
    assert again["backfilled"] == 0  # never twice: one delivery per event and target
    deliver_round()
    assert sorted(r.json()["eventType"] for r in receiver.requests) == ["payment.completed"] * 2


def test_back_fill_skips_operator_events_about_the_target_itself(api, tenant):
    from outbox.services import target_pause

    watched = make_target(tenant, "watched", event_types=["thing.*"])
    target_pause(target=watched)
    make_target(tenant, "ops", event_types=["target.*"])
    target_pause(target=make_target(tenant, "other"))
    Target.objects.filter(pk=watched.pk).update(event_types=["target.*"])
    body = api.post(_url("watched"), _window(), format="json").json()
    assert body["backfilled"] == 1  # "other" paused: yes; itself paused: no
    event = Delivery.objects.get(target=watched).event
    assert event.payload["target"] == "other"


def test_replay_is_capped(api, tenant, monkeypatch):
    monkeypatch.setattr(replay, "MAX_DELIVERIES", 2)
    _dead_deliveries(tenant, n=3)
    body = api.post(_url("hook"), _window(), format="json").json()
    assert (body["count"], body["capped"]) == (2, True)
    assert Delivery.objects.filter(status="pending").count() == 2


def test_a_delivery_on_the_wire_is_left_alone(api, tenant):
    target = _dead_deliveries(tenant, n=1)
    Delivery.objects.filter(target=target).update(
        locked_until=timezone.now() + timedelta(minutes=1), locked_by="w1"
    )
    assert api.post(_url("hook"), _window(), format="json").json()["requeued"] == 0


@pytest.mark.parametrize(
    "body,code",
    [
        (
            {"since": "2026-01-01T00:00:00Z", "until": "2026-01-02T00:00:00Z"},
            "replay_window_too_long",
        ),
        ({**_window(), "until": "2000-01-01T00:00:00Z"}, "invalid_replay_window"),
        (_window(status="pending"), "invalid_replay_status"),
        ({"until": "2026-01-02T00:00:00Z"}, "validation_error"),
    ],
)
def test_bad_replays_get_a_code_and_change_nothing(api, tenant, body, code):
    _dead_deliveries(tenant, n=1)
    assert_error(api.post(_url("hook"), body, format="json"), 400, code)
    assert Delivery.objects.get().status == "dead" and ReplayRequest.objects.count() == 0


def test_replay_is_tenant_isolated_and_needs_a_secret_key(api, other_api, browser_api, tenant):
    target = _dead_deliveries(tenant, n=1)
    for ref in ("hook", str(target.id)):
        assert_error(other_api.post(_url(ref), _window(), format="json"), 404, "not_found")
    assert_error(
        browser_api.post(_url("hook"), _window(), format="json"), 403, "secret_key_required"
    )
    assert Delivery.objects.get().status == "dead"


def test_replay_route_is_in_the_openapi_schema(api):
    schema = api.get("/api/schema/", HTTP_ACCEPT="application/json")
    if schema.status_code != 200:
        pytest.skip("schema route not mounted here")
    text = schema.content.decode()
    assert "/api/outbox/targets/{name}/replay" in text and "Idempotency-Key" in text


# --- admin ------------------------------------------------------------------------------------


def _staff(client, django_user_model, *codenames):
    user = django_user_model.objects.create_user("staff", "s@example.test", "pw", is_staff=True)
    perms = Permission.objects.filter(
        content_type__app_label="outbox",
        codename__in=["view_target", "change_target", "view_replayrequest", *codenames],
    )
    user.user_permissions.set(perms)
    client.force_login(user)
    return client


def test_admin_replay_action_asks_for_a_window_then_replays(client, django_user_model, tenant):
    target = _dead_deliveries(tenant, n=2)
    staff = _staff(client, django_user_model, "replay_target")
    url = "/admin/outbox/target/"
    form = staff.post(url, {"action": "replay", "_selected_action": [target.pk]})
    assert form.status_code == 200 and b'name="since"' in form.content
    assert Delivery.objects.filter(status="dead").count() == 2  # nothing yet
    now = timezone.localtime()
    done = staff.post(
        url,
        {
            "action": "replay",
            "apply": "1",
            "_selected_action": [target.pk],
            "since": (now - timedelta(hours=1)).strftime("%Y-%m-%d %H:%M:%S"),
            "until": (now + timedelta(minutes=1)).strftime("%Y-%m-%d %H:%M:%S"),
            "status": "",
        },
        follow=True,
    )
    assert "2 requeued, 0 back-filled" in done.content.decode()
    assert Delivery.objects.filter(status="pending").count() == 2
    assert ReplayRequest.objects.get().requested_by == "admin:staff"
    audit = staff.get("/admin/outbox/replayrequest/")
    assert audit.status_code == 200 and "admin:staff" in audit.content.decode()


def test_admin_replay_needs_its_permission(client, django_user_model, tenant):
    target = _dead_deliveries(tenant, n=2)
    staff = _staff(client, django_user_model, "pause_target")
    now = timezone.localtime()
    staff.post(
        "/admin/outbox/target/",
        {
            "action": "replay",
            "apply": "1",
            "_selected_action": [target.pk],
            "since": (now - timedelta(hours=1)).strftime("%Y-%m-%d %H:%M:%S"),
            "until": (now + timedelta(minutes=1)).strftime("%Y-%m-%d %H:%M:%S"),
        },
    )
    assert Delivery.objects.filter(status="dead").count() == 2
    assert ReplayRequest.objects.count() == 0


# --- outbox_requeue ---------------------------------------------------------------------------


def _run(*args) -> str:
    out = StringIO()
    call_command("outbox_requeue", *args, stdout=out)
    return out.getvalue()


def test_requeue_command_window_filters_and_progress(tenant):
    target = _dead_deliveries(tenant, n=3)
    first = Delivery.objects.filter(target=target).order_by("id").first()
    OutboxEvent.objects.filter(pk=first.event_id).update(
        created_at=timezone.now() - timedelta(days=3)
    )
    since = (timezone.now() - timedelta(days=1)).isoformat()
    until = (timezone.now() + timedelta(minutes=1)).isoformat()
    output = _run("--target", "hook", "--since", since, "--until", until, "--status", "dead")
    assert "requeued 2 of 2 dead deliveries" in output and "requeue [" in output
    assert Delivery.objects.filter(status="dead").count() == 1


def test_requeue_command_backfills_a_late_target(tenant):
    make_target(tenant, "old")
    publish(tenant, n=2, event_type="payment.completed")
    make_target(tenant, "late", event_types=["payment.*"])
    since = (timezone.now() - timedelta(hours=1)).isoformat()
    output = _run("--target", "late", "--since", since, "--backfill")
    assert "back-filled 2 deliveries for late" in output and "backfill [" in output
    assert Delivery.objects.filter(target__name="late").count() == 2
    with pytest.raises(Exception, match="--backfill needs --target and --since"):
        _run("--backfill")
