"""The first hour: the demo tenant's `inbox` target, the webhook inspector that verifies what it
receives, the demo page's realtime token, and the banner (`atlas_demo --show`)."""

import io
import json
import time

import pytest
from django.core.management import call_command

from core.errors import DomainError
from ops.demo import inbox
from ops.management.commands.atlas_run import Command as RunCommand
from outbox.delivery.send import sign
from outbox.models import Target
from outbox.realtime import tokens

pytestmark = pytest.mark.django_db

INBOX_URL = "http://127.0.0.1:8000/demo/inbox"


@pytest.fixture
def demo(settings, tmp_path):
    settings.VAR_DIR = tmp_path
    settings.ATLAS_DEMO_MODE = True
    call_command("atlas_demo", quiet=True, inbox_url=INBOX_URL)
    return json.loads((tmp_path / "demo-credentials.json").read_text())


def signed_post(client, secret, body: str, msg_id="msg_1", **extra_headers):
    timestamp = int(time.time())
    return client.post(
        "/demo/inbox",
        data=body,
        content_type="application/json",
        HTTP_WEBHOOK_ID=msg_id,
        HTTP_WEBHOOK_TIMESTAMP=str(timestamp),
        HTTP_WEBHOOK_SIGNATURE=sign(secret, msg_id, timestamp, body),
        HTTP_X_EVENT_TYPE="assessment.submitted",
        **extra_headers,
    )


def test_the_demo_tenant_gets_an_inbox_webhook_target(demo):
    target = Target.objects.get(tenant_id=demo["tenant_id"], name="inbox")
    assert (target.kind, target.url) == ("webhook", INBOX_URL)
    call_command("atlas_demo", quiet=True, inbox_url="http://127.0.0.1:8123/demo/inbox")
    assert Target.objects.filter(tenant_id=demo["tenant_id"]).count() == 1  # idempotent
    assert Target.objects.get(pk=target.pk).url == "http://127.0.0.1:8123/demo/inbox"


def test_without_the_demo_runs_allowance_loopback_targets_stay_refused(settings, tmp_path):
    settings.VAR_DIR = tmp_path
    settings.OUTBOX_ALLOWED_TARGET_NETWORKS = []  # production's default
    with pytest.raises(DomainError) as refused:
        call_command("atlas_demo", quiet=True, inbox_url=INBOX_URL)
    assert refused.value.code == "target_url_not_allowed"


def test_the_demo_run_allows_only_its_own_loopback_address(settings, monkeypatch):
    settings.OUTBOX_ALLOWED_TARGET_NETWORKS = ["10.0.5.7/32"]
    monkeypatch.delenv("LOG_LEVEL", raising=False)
    env = RunCommand()._demo_environment(verbose=False)
    assert env["OUTBOX_ALLOWED_TARGET_NETWORKS"] == "10.0.5.7/32,127.0.0.1/32"
    assert env["ATLAS_DEMO_MODE"] == "true" and env["ACCESS_LOG_LEVEL"] == "WARNING"


def test_a_signed_delivery_is_recorded_as_verified_and_a_tampered_one_is_not(client, demo):
    secret = Target.objects.get(name="inbox").secret
    body = json.dumps({"eventType": "assessment.submitted", "payload": {"n": 1}})
    assert signed_post(client, secret, body).json()["verified"] is True
    forged = signed_post(client, "whsec_" + "QUJD" * 8, body, msg_id="msg_2")
    assert forged.json()["verified"] is False
    unsigned = client.post("/demo/inbox", data=body, content_type="application/json")
    assert unsigned.json()["verified"] is False

    listed = client.get("/demo/inbox/deliveries").json()["deliveries"]
    assert [d["verified"] for d in listed] == [False, False, True]  # newest first
    oldest = listed[-1]
    assert oldest["eventType"] == "assessment.submitted"
    assert list(oldest["headers"])[:3] == ["webhook-id", "webhook-timestamp", "webhook-signature"]
    assert json.loads(oldest["body"]) == json.loads(body) and "\n" in oldest["body"]  # pretty
    assert "signature" in listed[1]["reason"].lower()
    assert "missing" in listed[0]["reason"].lower()


def test_the_inbox_keeps_the_last_hundred(client, demo):
    secret = Target.objects.get(name="inbox").secret
    for i in range(inbox.KEEP + 5):
        signed_post(client, secret, json.dumps({"i": i}), msg_id=f"m{i}")
    assert len(list(inbox.inbox_dir().glob("*.json"))) == inbox.KEEP
    assert json.loads(inbox.entries(limit=1)[0]["body"]) == {"i": inbox.KEEP + 4}


def test_the_inspector_page_explains_itself(client, demo):
    page = client.get("/demo/inbox")
    assert page.status_code == 200
    assert b"Webhook inspector" in page.content and INBOX_URL.encode() in page.content
    assert b'id="no-target"' not in page.content


def test_the_demo_page_token_is_a_realtime_token_of_the_demo_tenant(client, demo):
    answer = client.post("/demo/realtime-token").json()
    scope = tokens.token_read(answer["token"])
    assert scope.tenant_id == demo["tenant_id"]
    assert answer["streamUrl"] == "http://127.0.0.1:8001/api/realtime/stream"


@pytest.mark.parametrize(
    "method, path",
    [
        ("get", "/demo/inbox"),
        ("post", "/demo/inbox"),
        ("get", "/demo/inbox/deliveries"),
        ("post", "/demo/realtime-token"),
    ],
)
def test_outside_the_demo_run_the_extras_do_not_exist(client, settings, method, path):
    settings.ATLAS_DEMO_MODE = False  # the default: they would show the demo tenant's events
    assert getattr(client, method)(path).status_code == 404


def test_atlas_demo_show_prints_the_banner_again_and_changes_nothing(demo):
    out = io.StringIO()
    call_command("atlas_demo", show=True, stdout=out)
    text = out.getvalue()
    for expected in ("/demo/inbox", "/demo/", "/admin/", "/api/docs/", ":8001/api/realtime"):
        assert expected in text, expected
    assert demo["secret_key"] in text and "make stop-db" in text


def test_atlas_demo_show_without_a_demo_says_what_to_do(settings, tmp_path):
    settings.VAR_DIR = tmp_path
    err = io.StringIO()
    call_command("atlas_demo", show=True, stderr=err)
    assert "make run" in err.getvalue()
    assert not (tmp_path / "demo-credentials.json").exists()
