"""Subscriptions: a target's eventTypes patterns and payload filter, routed inside the publish
statement; events nobody subscribed to are visible as no_targets."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from outbox.models import Delivery, OutboxEvent, Target
from tests.outbox.factories import make_target, publish
from tests.tenancy import assert_error

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client(client, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("ops", "ops@example.test", "pw"))
    return client


def _routed(event) -> list[str]:
    return sorted(Delivery.objects.filter(event=event).values_list("target__name", flat=True))


def test_existing_and_new_targets_default_to_every_event(tenant):
    make_target(tenant, "all")
    assert Target.objects.get().event_types == ["*"]
    assert _routed(publish(tenant, event_type="anything.at_all")[0]) == ["all"]


@pytest.mark.parametrize(
    "event_type,expected",
    [
        ("assessment.submitted", ["exact", "star"]),
        ("payment.completed", ["prefix", "star"]),
        ("payment.refund.created", ["prefix", "star"]),
        ("payments.completed", ["star"]),  # a prefix is whole segments: payment.* ≠ payments.
        ("payment", ["star"]),
        ("upload.stored", ["star"]),
    ],
)
def test_patterns_route_exact_prefix_and_star(tenant, event_type, expected):
    make_target(tenant, "exact", event_types=["assessment.submitted"])
    make_target(tenant, "prefix", event_types=["payment.*"])
    make_target(tenant, "star", event_types=["*"])
    assert _routed(publish(tenant, event_type=event_type)[0]) == expected


def test_routing_is_one_statement(tenant):
    make_target(tenant, "a", event_types=["x.*"])
    make_target(tenant, "b", event_types=["y.*"])
    from django.db import transaction

    from outbox.services import event_publish

    with CaptureQueriesContext(connection) as queries, transaction.atomic():
        event = event_publish(tenant=tenant, event_type="x.one", topic="t", payload={})
    assert len([q for q in queries.captured_queries if "outbox_" in q["sql"]]) == 1
    assert _routed(event) == ["a"]


def test_payload_filter_is_an_exact_match_on_top_level_fields(tenant):
    make_target(tenant, "pro", payload_filter={"plan": "pro"})
    make_target(tenant, "any")
    pro = publish(tenant, payload={"plan": "pro", "n": 1})[0]
    free = publish(tenant, payload={"plan": "free"})[0]
    nested = publish(tenant, payload={"meta": {"plan": "pro"}})[0]
    assert _routed(pro) == ["any", "pro"]
    assert _routed(free) == ["any"]
    assert _routed(nested) == ["any"]


def test_event_nobody_subscribed_to_is_listed_as_no_targets(api, tenant):
    make_target(tenant, "pay", event_types=["payment.*"])
    routed = publish(tenant, event_type="payment.completed")[0]
    lonely = publish(tenant, event_type="upload.stored")[0]
    detail = api.get(f"/api/outbox/events/{lonely.id}").json()
    assert detail["status"] == "no_targets" and detail["deliveries"] == []
    listed = api.get("/api/outbox/events?status=no_targets").json()["results"]
    assert [e["id"] for e in listed] == [str(lonely.id)]
    pending = api.get("/api/outbox/events?status=pending").json()["results"]
    assert [e["id"] for e in pending] == [str(routed.id)]
    assert_error(api.get("/api/outbox/events?status=lost"), 400, "invalid_status")


def test_api_creates_and_updates_subscriptions(api, tenant):
    created = api.post(
        "/api/outbox/targets",
        {
            "name": "n8n",
            "kind": "webhook",
            "url": "http://127.0.0.1:9/hook",
            "eventTypes": ["assessment.submitted", "payment.*"],
            "payloadFilter": {"plan": "pro"},
            "permanentStatuses": [400],
        },
        format="json",
    )
    assert created.status_code == 201, created.json()
    body = created.json()
    assert body["eventTypes"] == ["assessment.submitted", "payment.*"]
    assert body["payloadFilter"] == {"plan": "pro"}
    assert body["permanentStatuses"] == [400]
    by_id = api.patch(
        f"/api/outbox/targets/{body['id']}",
        {"eventTypes": ["upload.*"], "payloadFilter": None},
        format="json",
    )
    assert by_id.status_code == 200, by_id.json()
    target = Target.objects.get()
    assert (target.event_types, target.payload_filter) == (["upload.*"], None)
    assert target.permanent_statuses == [400]  # not given: unchanged
    assert api.get("/api/outbox/targets/n8n").json()["eventTypes"] == ["upload.*"]
    assert _routed(publish(tenant, event_type="upload.stored")[0]) == ["n8n"]


@pytest.mark.parametrize(
    "field,value,code",
    [
        ("eventTypes", [], "invalid_event_types"),
        ("eventTypes", "payment.*", "invalid_event_types"),
        ("eventTypes", ["pay*"], "invalid_event_types"),
        ("eventTypes", ["payment.*.x"], "invalid_event_types"),
        ("eventTypes", ["a b"], "invalid_event_types"),
        ("eventTypes", [5], "invalid_event_types"),
        ("eventTypes", ["x"] * 51, "invalid_event_types"),
        ("payloadFilter", {"plan": {"nested": 1}}, "invalid_payload_filter"),
        ("payloadFilter", [1], "invalid_payload_filter"),
        ("payloadFilter", {"plan": "x" * 201}, "invalid_payload_filter"),
        ("payloadFilter", {"k" * 201: 1}, "invalid_payload_filter"),
        ("payloadFilter", {"plan": "a\u0000b"}, "unstorable_text"),
        ("permanentStatuses", [200], "invalid_permanent_statuses"),
        ("permanentStatuses", ["404"], "invalid_permanent_statuses"),
    ],
)
def test_bad_routing_fields_get_a_code_and_change_nothing(api, tenant, field, value, code):
    body = {"name": "n8n", "kind": "webhook", "url": "http://127.0.0.1:9/hook", field: value}
    assert_error(api.post("/api/outbox/targets", body, format="json"), 400, code)
    assert Target.objects.count() == 0
    make_target(tenant, "kept", event_types=["a.*"])
    assert_error(api.patch("/api/outbox/targets/kept", {field: value}, format="json"), 400, code)
    assert Target.objects.get().event_types == ["a.*"]


def test_target_routes_are_tenant_isolated(api, other_api, tenant):
    target = make_target(tenant, "mine")
    for ref in ("mine", str(target.id)):
        response = other_api.patch(
            f"/api/outbox/targets/{ref}", {"eventTypes": ["x"]}, format="json"
        )
        assert_error(response, 404, "not_found")
    assert Target.objects.get().event_types == ["*"]


@pytest.mark.parametrize(
    "event_type, topic",
    [
        ("target.paused", "x"),  # an operator event's own name
        ("target.anything", "x"),  # a look-alike under the reserved prefixes
        ("delivery.failed", "x"),
        ("thing.happened", "operator"),  # the operator topic
    ],
)
def test_operator_event_types_are_reserved(api, tenant, event_type, topic):
    make_target(tenant)
    body = {"eventType": event_type, "topic": topic, "payload": {}}
    assert_error(api.post("/api/outbox/events", body, format="json"), 400, "reserved_event_type")
    assert OutboxEvent.objects.count() == 0


def test_admin_lists_events_with_no_matching_target(staff_client, tenant):
    make_target(tenant, "pay", event_types=["payment.*"])
    routed = publish(tenant, event_type="payment.completed")[0]
    lonely = publish(tenant, event_type="upload.stored")[0]
    for choice, expected in (("no_targets", lonely), ("pending", routed)):
        page = staff_client.get(f"/admin/outbox/outboxevent/?status={choice}")
        assert page.status_code == 200
        assert [e.id for e in page.context["cl"].result_list] == [expected.id]
    assert "no matching target" in page.content.decode()


def test_admin_target_form_checks_subscriptions_like_the_api(tenant):
    from outbox.admin import TargetAdminForm

    target = make_target(tenant, "n8n", url="http://127.0.0.1:9/hook")
    base = {
        "tenant": tenant.pk,
        "name": "n8n",
        "kind": "webhook",
        "url": "http://127.0.0.1:9/hook",
        "is_enabled": "on",
        "timeout_seconds": "10",
        "permanent_statuses": "",
        "payload_filter": "null",
    }
    bad = TargetAdminForm(data={**base, "event_types": "pay*"}, instance=target)
    assert not bad.is_valid() and "invalid_event_types" in str(bad.errors["event_types"])
    bad = TargetAdminForm(
        data={**base, "event_types": "*", "permanent_statuses": "200"}, instance=target
    )
    assert not bad.is_valid() and "invalid_permanent_statuses" in str(bad.errors)
    good = TargetAdminForm(
        data={**base, "event_types": "payment.*,upload.stored", "permanent_statuses": "400"},
        instance=target,
    )
    assert good.is_valid(), good.errors
    good.save()
    target.refresh_from_db()
    assert (target.event_types, target.permanent_statuses) == (
        ["payment.*", "upload.stored"],
        [400],
    )
