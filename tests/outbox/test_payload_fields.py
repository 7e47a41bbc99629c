"""Payload fields cannot forge anything downstream (Slack markup, SSE lines, HTTP headers), and
a tenant's targets are bounded (count, timeout)."""

import pytest

from core.errors import DomainError
from outbox.models import Delivery, OutboxEvent, Target
from outbox.services import event_publish, target_create
from tests.outbox.factories import make_target, publish
from tests.outbox.helpers import deliver_round
from tests.tenancy import assert_error

pytestmark = pytest.mark.django_db

EVENT = {"eventType": "order.paid", "topic": "payments", "payload": {"amount": 100}}


def test_slack_text_is_escaped_so_visitor_input_posts_as_plain_text(tenant, receiver):
    make_target(tenant, "slack", kind="slack", url=receiver.url)
    publish(
        tenant,
        event_type="assessment.<!here>",
        topic="a&b",
        payload={
            "firstName": "<!channel> <https://evil.example/login|Re-login> & <@U123>",
            "<b>": "x > y",
        },
    )
    deliver_round()
    (request,) = receiver.requests
    text = request.json()["text"]
    assert "<" not in text and ">" not in text  # no mention, link or markup survives
    escaped = "&lt;!channel&gt; &lt;https://evil.example/login|Re-login&gt; &amp; &lt;@U123&gt;"
    assert escaped in text
    assert "*[a&amp;b] assessment.&lt;!here&gt;*" in text
    assert "• &lt;b&gt;: x &gt; y" in text


@pytest.mark.parametrize(
    "field,value",
    [
        ("eventType", "order.paid\nid: 999999\ndata: forged"),
        ("eventType", "order.paid\rid: 1"),
        ("eventType", "order\x1bpaid"),
        ("eventType", "order\u2028paid"),  # a line separator to JavaScript
        ("topic", "payments\nevent: admin"),
        ("topic", "pay\x7fments"),
        ("orderingKey", "cart-1\r\nx-injected: 1"),
        ("orderingKey", "cart\x851"),  # NEL: a C1 control
        ("idempotencyKey", "k-1\nx"),
    ],
)
def test_control_characters_are_refused(api, tenant, field, value):
    make_target(tenant)
    error = assert_error(
        api.post("/api/outbox/events", {**EVENT, field: value}, format="json"),
        400,
        "control_characters_not_allowed",
    )
    assert error["details"] == {"field": field}
    assert OutboxEvent.objects.count() == 0 and Delivery.objects.count() == 0


def test_control_characters_are_refused_by_the_service_itself(tenant):
    """Every app publishes through event_publish: the rule lives there, not only in the API."""
    with pytest.raises(DomainError) as refused:
        event_publish(tenant=tenant, event_type="a\nb", topic="t", payload={})
    assert (refused.value.code, refused.value.details) == (
        "control_characters_not_allowed",
        {"field": "eventType"},
    )
    with pytest.raises(DomainError) as refused:
        target_create(tenant=tenant, name="evil\nname", kind="realtime")
    assert (refused.value.code, refused.value.details) == (
        "control_characters_not_allowed",
        {"field": "name"},
    )
    assert OutboxEvent.objects.count() == 0 and Target.objects.count() == 0


def test_ordinary_names_still_pass(api, tenant):
    make_target(tenant)
    body = {**EVENT, "eventType": "assessment.submitted", "orderingKey": "séance 1/ü"}
    assert api.post("/api/outbox/events", body, format="json").status_code == 201


@pytest.mark.parametrize("seconds", [15.5, 30, 60])
def test_timeouts_above_fifteen_seconds_are_refused(api, tenant, seconds):
    body = {"name": "x", "kind": "realtime", "timeoutSeconds": seconds}
    assert_error(api.post("/api/outbox/targets", body, format="json"), 400, "validation_error")
    with pytest.raises(DomainError) as refused:
        target_create(tenant=tenant, name="x", kind="realtime", timeout_seconds=seconds)
    assert refused.value.code == "invalid_timeout"
    assert Target.objects.count() == 0


def test_timeout_defaults_to_ten_and_fifteen_is_the_most(api):
    first = api.post("/api/outbox/targets", {"name": "a", "kind": "realtime"}, format="json")
    assert first.json()["timeoutSeconds"] == 10
    body = {"name": "b", "kind": "realtime", "timeoutSeconds": 15}
    assert api.post("/api/outbox/targets", body, format="json").json()["timeoutSeconds"] == 15


def test_a_tenant_has_at_most_the_configured_number_of_targets(api, other_api, settings):
    settings.OUTBOX_MAX_TARGETS_PER_TENANT = 3
    for n in range(3):
        body = {"name": f"t{n}", "kind": "realtime"}
        assert api.post("/api/outbox/targets", body, format="json").status_code == 201
    error = assert_error(
        api.post("/api/outbox/targets", {"name": "t3", "kind": "realtime"}, format="json"),
        400,
        "too_many_targets",
    )
    assert error["details"] == {"limit": 3}
    assert Target.objects.count() == 3
    # the limit is per tenant
    body = {"name": "t0", "kind": "realtime"}
    assert other_api.post("/api/outbox/targets", body, format="json").status_code == 201


def test_the_target_limit_defaults_to_twenty(api):
    for n in range(20):
        body = {"name": f"t{n}", "kind": "realtime"}
        assert api.post("/api/outbox/targets", body, format="json").status_code == 201
    body = {"name": "t20", "kind": "realtime"}
    assert_error(api.post("/api/outbox/targets", body, format="json"), 400, "too_many_targets")
