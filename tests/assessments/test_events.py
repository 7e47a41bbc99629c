import json
import threading
import uuid
from datetime import timedelta

import pytest
from django.db import connection, connections
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from assessments import metrics
from assessments.models import AnalyticsEvent
from tests.assessments.factories import event_body
from tests.conftest import ORIGIN, client_for
from tests.tenancy import assert_error

URL = "/api/assessments/events"


@pytest.mark.django_db
def test_valid_events_are_stored_in_one_insert(browser_api, tenant):
    session_id = str(uuid.uuid4())
    events = [event_body(sessionId=session_id, properties={"i": i}) for i in range(50)]
    with CaptureQueriesContext(connection) as queries:
        response = browser_api.post(URL, {"events": events}, format="json")
    assert response.status_code == 200
    assert response.json() == {"accepted": 50, "rejected": 0, "stored": True, "errors": []}
    inserts = [q for q in queries.captured_queries if q["sql"].lstrip().startswith("INSERT")]
    assert len(inserts) == 1
    assert AnalyticsEvent.objects.filter(tenant=tenant, session_id=session_id).count() == 50
    row = AnalyticsEvent.objects.get(message_id=events[7]["messageId"])
    assert row.properties == {"i": 7} and row.name == "question_answered"


@pytest.mark.django_db
def test_text_plain_beacon_body_with_key_in_query(publishable_key):
    client = client_for(None, HTTP_ORIGIN=ORIGIN)
    body = json.dumps({"events": [event_body(), event_body()]})
    response = client.post(
        f"{URL}?key={publishable_key}", body, content_type="text/plain;charset=UTF-8"
    )
    assert response.status_code == 200, response.content
    assert response.json()["accepted"] == 2
    assert AnalyticsEvent.objects.count() == 2


@pytest.mark.django_db
def test_text_plain_with_bad_json_is_malformed(browser_api):
    response = browser_api.post(URL, "{events:", content_type="text/plain")
    assert_error(response, 400, "malformed_json")


@pytest.mark.django_db
def test_duplicate_message_ids_are_accepted_and_stored_once(browser_api, other_api, tenant):
    event = event_body()
    first = browser_api.post(URL, {"events": [event, event]}, format="json").json()
    again = browser_api.post(URL, {"events": [event]}, format="json").json()
    assert first["accepted"] == 2 and again["accepted"] == 1 and again["stored"] is True
    assert AnalyticsEvent.objects.filter(tenant=tenant).count() == 1
    # the same messageId from another tenant is another event
    other_api.post(URL, {"events": [event]}, format="json")
    assert AnalyticsEvent.objects.count() == 2


@pytest.mark.django_db
def test_epoch_millisecond_timestamps_are_accepted(browser_api):
    now_ms = int(timezone.now().timestamp() * 1000)
    response = browser_api.post(URL, {"events": [event_body(timestamp=now_ms)]}, format="json")
    assert response.json()["accepted"] == 1
    stored = AnalyticsEvent.objects.get().occurred_at
    assert abs(stored.timestamp() * 1000 - now_ms) < 2


@pytest.mark.django_db
@pytest.mark.parametrize(
    "event,code",
    [
        ("not an object", "invalid_event"),
        (event_body(properties={"x": "nul\u0000"}), "invalid_event"),
        (event_body(properties={"x": "lone \ud800"}), "invalid_event"),
        (event_body(messageId=None), "invalid_message_id"),
        (event_body(messageId=""), "invalid_message_id"),
        (event_body(messageId="m" * 101), "invalid_message_id"),
        (event_body(name=" "), "invalid_name"),
        (event_body(name=None), "invalid_name"),
        (event_body(sessionId="nope"), "invalid_session_id"),
        (event_body(sessionId=7), "invalid_session_id"),
        (event_body(properties=[1]), "invalid_properties"),
        (event_body(timestamp="yesterday"), "invalid_timestamp"),
        (event_body(timestamp=None), "invalid_timestamp"),
        (event_body(timestamp=True), "invalid_timestamp"),
        (event_body(timestamp="1970-01-01T00:00:00Z"), "invalid_timestamp"),
        (
            event_body(timestamp=(timezone.now() + timedelta(days=3)).isoformat()),
            "invalid_timestamp",
        ),
        (event_body(properties={"blob": "x" * 33_000}), "event_too_large"),
    ],
)
def test_invalid_event_is_rejected_alone(browser_api, event, code):
    good = [event_body(), event_body()]
    # json.dumps escapes non-ASCII, so even a lone surrogate travels as a \\udXXX escape
    body = json.dumps({"events": [good[0], event, good[1]]})
    response = browser_api.generic("POST", URL, body, content_type="application/json")
    assert response.status_code == 200
    assert response.json() == {
        "accepted": 2,
        "rejected": 1,
        "stored": True,
        "errors": [{"index": 1, "code": code}],
    }
    stored = set(AnalyticsEvent.objects.values_list("message_id", flat=True))
    assert stored == {good[0]["messageId"], good[1]["messageId"]}


@pytest.mark.django_db
@pytest.mark.parametrize(
    "body,code,status",
    [
        ([1, 2], "invalid_body", 400),
        ({}, "invalid_events", 400),
        ({"events": {"a": 1}}, "invalid_events", 400),
        ({"events": [event_body() for _ in range(501)]}, "too_many_events", 413),
        (
            {"events": [event_body(properties={"b": "x" * 30_000}) for _ in range(18)]},
            "payload_too_large",
            413,
        ),
    ],
)
def test_bad_events_request_has_its_own_code(browser_api, body, code, status):
    assert_error(browser_api.post(URL, body, format="json"), status, code)
    assert AnalyticsEvent.objects.count() == 0


@pytest.mark.django_db
def test_events_need_a_key(anon_api):
    assert_error(anon_api.post(URL, {"events": []}, format="json"), 401, "authentication_required")


@pytest.mark.django_db
def test_wrong_content_type_is_415(browser_api):
    response = browser_api.post(URL, "events=1", content_type="application/x-www-form-urlencoded")
    assert_error(response, 415, "unsupported_media_type")


@pytest.mark.django_db(transaction=True)
def test_storage_failure_answers_200_stored_false_and_is_counted(
    browser_api, tenant, settings, caplog
):
    """A real failure: another connection holds an exclusive lock on the table, so the
    insert hits its statement timeout. The client still gets 200 and nothing half-stored."""
    settings.ASSESSMENTS_EVENTS_STATEMENT_TIMEOUT_MS = 200
    locked, release = threading.Event(), threading.Event()

    def hold_lock():
        try:
            with connections["default"].cursor() as cursor:
                cursor.execute("BEGIN")
                cursor.execute(f"LOCK TABLE {AnalyticsEvent._meta.db_table} IN EXCLUSIVE MODE")
                locked.set()
                release.wait(timeout=30)
                cursor.execute("ROLLBACK")
        finally:
            connections.close_all()

    holder = threading.Thread(target=hold_lock)
    holder.start()
    assert locked.wait(timeout=10)
    try:
        response = browser_api.post(URL, {"events": [event_body(), event_body()]}, format="json")
    finally:
        release.set()
        holder.join(timeout=30)

    failures = metrics.events_store_failures()
    assert response.status_code == 200, (response.content, failures)
    assert response.json() == {"accepted": 2, "rejected": 0, "stored": False, "errors": []}, (
        failures
    )
    assert AnalyticsEvent.objects.count() == 0
    assert failures["failures"] == 1 and failures["lost_events"] == 2, failures
    assert "QueryCanceled" in failures["last"]["error"] or "timeout" in failures["last"]["error"]
    assert "analytics events not stored" in caplog.text
    # the connection is usable afterwards: the next batch is stored
    again = browser_api.post(URL, {"events": [event_body()]}, format="json")
    assert again.json()["stored"] is True and AnalyticsEvent.objects.count() == 1


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("bad_properties", "code"),
    [
        ('{"score": 1e999}', "invalid_json_number"),
        ('{"x": %s}' % ("[" * 70 + "]" * 70), "json_too_deep"),
    ],
)
def test_unstorable_json_rejects_that_event_alone(browser_api, tenant, bad_properties, code):
    # One such event used to turn a 50-event batch into stored: false (1e999 became
    # Infinity, which jsonb refuses) or a 500 (nesting); now it is rejected alone.
    events = [json.dumps(event_body(properties={"i": i})) for i in range(50)]
    bad = event_body()
    bad.pop("properties", None)
    bad_text = json.dumps(bad)[:-1] + ', "properties": ' + bad_properties + "}"
    events[17] = bad_text
    body = '{"events": [' + ", ".join(events) + "]}"
    response = browser_api.generic("POST", URL, body, content_type="application/json")
    assert response.status_code == 200, response.content
    assert response.json() == {
        "accepted": 49,
        "rejected": 1,
        "stored": True,
        "errors": [{"index": 17, "code": code}],
    }
    assert AnalyticsEvent.objects.filter(tenant=tenant).count() == 49


@pytest.mark.django_db
def test_events_body_too_deep_for_the_parser_is_json_too_deep(browser_api):
    body = '{"events": ' + "[" * 100_000 + "]" * 100_000 + "}"
    response = browser_api.generic("POST", URL, body, content_type="application/json")
    assert_error(response, 400, "json_too_deep")
