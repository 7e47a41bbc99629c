"""A real `manage.py outbox_worker` process: a receiver briefly not ready (404) gets its event
later, and the tenant's Slack target hears the circuit open and close, in words."""

import json
import time

import pytest

from outbox.models import Delivery
from tests.outbox.factories import make_target, publish
from tests.outbox.receiver import start_receiver
from tests.processes import manage_popen

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def _wait(predicate, timeout=40.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_worker_retries_a_404_and_tells_slack_about_the_circuit(tenant, receiver):
    slack, slack_server = start_receiver()
    worker = None
    try:
        make_target(tenant, "n8n", url=receiver.url, event_types=["assessment.*"])
        make_target(tenant, "alerts", kind="slack", url=slack.url, event_types=["target.*"])
        # n8n activating its workflow: 404 twice, then ready
        receiver.answer = lambda r, i: (404, {}, "not active") if i < 2 else (200, {}, "ok")
        publish(tenant, n=1, event_type="assessment.submitted")
        worker = manage_popen(
            "outbox_worker",
            "--poll",
            "0.2",
            OUTBOX_CIRCUIT_FAILURES="2",
            OUTBOX_CIRCUIT_OPEN_SECONDS="1",
            OUTBOX_CIRCUIT_CLOSE_SUCCESSES="1",
            OUTBOX_BACKOFF_BASE_SECONDS="1",
            OUTBOX_BACKOFF_MAX_SECONDS="1",
        )
        business = Delivery.objects.filter(target__name="n8n", event__topic="things")
        assert _wait(lambda: business.filter(status="delivered").exists())
        assert _wait(lambda: len(slack.requests) >= 2)
        texts = [json.loads(r.body)["text"] for r in slack.requests]
        assert (
            texts[0] == ":rotating_light: Target *n8n* circuit opened: deliveries wait (http_404)"
        )
        assert texts[1].startswith(":white_check_mark: Target *n8n* circuit closed")
        assert len(receiver.requests) == 3  # 404, 404, 200: the same event each time
        assert len({r.headers["webhook-id"] for r in receiver.requests}) == 1
    finally:
        if worker is not None:
            worker.kill()
            worker.wait(timeout=10)
        slack_server.shutdown()
        slack_server.server_close()
