import pytest

from outbox.models import Delivery, OutboxEvent, Target
from tests.outbox.factories import make_target, publish
from tests.tenancy import assert_error, assert_tenant_isolated

pytestmark = pytest.mark.django_db

EVENT = {"eventType": "order.paid", "topic": "payments", "payload": {"amount": 100}}


def test_post_event_creates_then_replays_with_the_same_key(api, tenant):
    make_target(tenant)
    body = {**EVENT, "idempotencyKey": "pay-1"}
    first = api.post("/api/outbox/events", body, format="json")
    assert first.status_code == 201, first.json()
    again = api.post("/api/outbox/events", body, format="json")
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert first.json()["status"] == "pending"
    assert [d["target"] for d in first.json()["deliveries"]] == ["hook"]
    assert OutboxEvent.objects.count() == 1


@pytest.mark.parametrize(
    "body,status,code",
    [
        ({**EVENT, "payload": [1]}, 400, "payload_not_object"),
        ({**EVENT, "payload": "x"}, 400, "payload_not_object"),
        ({**EVENT, "target": "nope"}, 400, "unknown_target"),
        ({"topic": "t", "payload": {}}, 400, "validation_error"),
        ({**EVENT, "payload": {"blob": "x" * 300_000}}, 413, "payload_too_large"),
    ],
)
def test_bad_events_get_a_code_and_leave_no_rows(api, tenant, body, status, code):
    make_target(tenant)
    assert_error(api.post("/api/outbox/events", body, format="json"), status, code)
    assert OutboxEvent.objects.count() == 0 and Delivery.objects.count() == 0


def test_publishable_key_cannot_publish(browser_api):
    assert_error(
        browser_api.post("/api/outbox/events", EVENT, format="json"), 403, "secret_key_required"
    )


def test_event_detail_shows_deliveries_and_is_tenant_isolated(api, other_api, tenant):
    make_target(tenant)
    event = publish(tenant)[0]
    response = api.get(f"/api/outbox/events/{event.id}")
    assert response.status_code == 200
    assert response.json()["deliveries"][0]["attemptLog"] == []
    assert_tenant_isolated(other_api, "get", f"/api/outbox/events/{event.id}")


def test_event_list_is_paginated_and_scoped(api, other_api, tenant, other_tenant):
    publish(tenant, n=3)
    publish(other_tenant, n=2)
    assert len(api.get("/api/outbox/events?limit=2").json()["results"]) == 2
    assert len(api.get("/api/outbox/events").json()["results"]) == 3
    assert len(other_api.get("/api/outbox/events").json()["results"]) == 2


@pytest.mark.parametrize("query", ["topic=%00", "eventType=a%00b"])
def test_event_list_refuses_a_nul_in_a_text_filter(api, query):
    # Before: 500 (PostgreSQL text cannot hold NUL; found by tests/hardening/test_fuzz.py)
    assert_error(api.get(f"/api/outbox/events?{query}"), 400, "unstorable_text")


def test_target_create_returns_the_secret_once_and_lists(api, other_api):
    response = api.post(
        "/api/outbox/targets",
        {"name": "n8n-main", "kind": "webhook", "url": "https://n8n.example.test/hook"},
        format="json",
    )
    assert response.status_code == 201, response.json()
    assert response.json()["secret"].startswith("whsec_")
    listed = api.get("/api/outbox/targets").json()["results"]
    assert [t["name"] for t in listed] == ["n8n-main"] and "secret" not in listed[0]
    assert other_api.get("/api/outbox/targets").json()["results"] == []


@pytest.mark.parametrize(
    "body,status,code",
    [
        ({"name": "x", "kind": "webhook"}, 400, "target_url_required"),
        ({"name": "x", "kind": "ftp", "url": "https://a.test"}, 400, "validation_error"),
        ({"name": "bad name", "kind": "realtime"}, 400, "validation_error"),
        (
            {"name": "x", "kind": "webhook", "url": "https://a.test", "secret": "nope"},
            400,
            "invalid_secret",
        ),
    ],
)
def test_bad_targets_are_refused(api, body, status, code):
    assert_error(api.post("/api/outbox/targets", body, format="json"), status, code)
    assert Target.objects.count() == 0


def test_duplicate_target_name_is_409(api, tenant):
    make_target(tenant, "dup")
    body = {"name": "dup", "kind": "realtime"}
    assert_error(api.post("/api/outbox/targets", body, format="json"), 409, "target_exists")


def test_slack_target_defaults_to_one_per_second(api):
    body = {"name": "slack", "kind": "slack", "url": "https://hooks.slack.test/x"}
    assert api.post("/api/outbox/targets", body, format="json").json()["rateLimitPerSecond"] == 1


def test_rotate_secret_keeps_the_old_one_for_a_day(api, other_api, tenant):
    target = make_target(tenant, "hook")
    old = api.get("/api/outbox/targets/hook/secret").json()["secret"]
    assert old == target.secret
    assert_tenant_isolated(other_api, "get", "/api/outbox/targets/hook/secret")
    assert_tenant_isolated(
        other_api,
        "post",
        "/api/outbox/targets/hook/rotate-secret",
        unchanged=lambda: Target.objects.get(pk=target.pk).secret,
    )
    rotated = api.post("/api/outbox/targets/hook/rotate-secret").json()
    assert rotated["secret"] != old and rotated["previousSecret"] == old
    target.refresh_from_db()
    hours = (target.previous_secret_expires_at - target.updated_at).total_seconds() / 3600
    assert 23.9 < hours <= 24


def test_new_tenant_gets_default_targets_from_settings(settings, db):
    from tenants.services import tenant_create

    settings.N8N_WEBHOOK_URL = "https://n8n.example.test/webhook/atlas"
    settings.N8N_WEBHOOK_SECRET = None
    settings.SLACK_WEBHOOK_URL = "https://hooks.slack.test/services/x"
    tenant = tenant_create(name="Initech")
    targets = {t.name: t for t in Target.objects.filter(tenant=tenant)}
    assert set(targets) == {"n8n", "slack"}
    assert targets["n8n"].secret.startswith("whsec_")
    assert targets["slack"].rate_limit_per_second == 1
