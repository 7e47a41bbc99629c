"""The publishable key is public and session ids travel in events and URLs: a session's own
secret token (returned once, at creation) is what lets a browser read or write it again."""

from __future__ import annotations

import hashlib
import json
import uuid

import pytest
from django.db import connection

from assessments.models import AnalyticsEvent, AssessmentSession, Submission
from outbox.models import OutboxEvent
from tests.assessments.factories import (
    SESSION_TOKEN,
    SessionFactory,
    event_body,
    session_body,
    submit_body,
)
from tests.conftest import ORIGIN, client_for
from tests.tenancy import assert_error

pytestmark = pytest.mark.django_db

SESSION_URL = "/api/assessments/session"
PRIVATE_FIELDS = {"email", "firstName", "formData"}


@pytest.fixture
def visitor(publishable_key):
    """The visitor who created the session (sends the token it got)."""
    return client_for(publishable_key, HTTP_ORIGIN=ORIGIN)


@pytest.fixture
def stranger(publishable_key):
    """Anyone else on the internet: the same public key, the session id, no token."""
    return client_for(publishable_key, HTTP_ORIGIN=ORIGIN)


def create_session(client, **fields) -> tuple[str, str]:
    body = session_body(
        email="ada@example.com", firstName="Ada", formData={"phone": "555"}, **fields
    )
    response = client.post(SESSION_URL, body, format="json")
    assert response.status_code == 201, response.content
    return body["sessionId"], response.json()["sessionToken"]


def snapshot(session_id):
    return AssessmentSession.objects.filter(pk=session_id).values().get()


# --- the attacks (each one worked before session tokens) ----------------------------------


def test_a_stranger_with_the_session_id_reads_nothing(visitor, stranger):
    session_id, _token = create_session(visitor)
    response = stranger.get(f"{SESSION_URL}/{session_id}")
    assert_error(response, 403, "session_token_required")
    assert b"ada@example.com" not in response.content and b"555" not in response.content


def test_a_stranger_cannot_overwrite_an_open_sessions_email(visitor, stranger):
    session_id, _token = create_session(visitor)
    before = snapshot(session_id)
    response = stranger.post(
        SESSION_URL,
        {"sessionId": session_id, "status": "in_progress", "email": "evil@example.com"},
        format="json",
    )
    assert_error(response, 403, "session_token_required")
    assert b"ada@example.com" not in response.content
    assert snapshot(session_id) == before


def test_a_stranger_cannot_answer_or_submit_for_the_session(visitor, stranger):
    session_id, _token = create_session(visitor)
    before = snapshot(session_id)
    answer = stranger.post(
        f"{SESSION_URL}/{session_id}/answers", {"questionId": "q1", "answer": "x"}, format="json"
    )
    assert_error(answer, 403, "session_token_required")
    submit = stranger.post(
        "/api/assessments/submit", submit_body(session_id, email="evil@example.com"), "json"
    )
    assert_error(submit, 403, "session_token_required")
    assert snapshot(session_id) == before
    assert Submission.objects.count() == 0 and OutboxEvent.objects.count() == 0


def test_a_stranger_cannot_replay_a_submission_to_read_it(visitor, stranger):
    session_id, token = create_session(visitor)
    body = submit_body(session_id)
    stored = visitor.post("/api/assessments/submit", body, "json", HTTP_X_SESSION_TOKEN=token)
    assert stored.status_code == 201, stored.content
    replay = stranger.post("/api/assessments/submit", body, "json")
    assert_error(replay, 403, "session_token_required")
    assert str(body["answers"]["q2"]) not in replay.content.decode()
    assert Submission.objects.count() == 1 and OutboxEvent.objects.count() == 1


@pytest.mark.parametrize("wrong", ["nope", SESSION_TOKEN, "x" * 500])
def test_a_wrong_token_is_invalid_session_token(visitor, stranger, wrong):
    session_id, _token = create_session(visitor)
    before = snapshot(session_id)
    headers = {"HTTP_X_SESSION_TOKEN": wrong}
    assert_error(
        stranger.get(f"{SESSION_URL}/{session_id}", **headers), 403, "invalid_session_token"
    )
    upsert = stranger.post(
        SESSION_URL, {"sessionId": session_id, "status": "abandoned"}, "json", **headers
    )
    assert_error(upsert, 403, "invalid_session_token")
    answers = stranger.post(
        f"{SESSION_URL}/{session_id}/answers", {"questionId": "q", "answer": 1}, "json", **headers
    )
    assert_error(answers, 403, "invalid_session_token")
    submit = stranger.post("/api/assessments/submit", submit_body(session_id), "json", **headers)
    assert_error(submit, 403, "invalid_session_token")
    assert snapshot(session_id) == before
    assert Submission.objects.count() == 0 and OutboxEvent.objects.count() == 0


# --- what the visitor holding the token may do ---------------------------------------------


def test_the_token_is_returned_once_and_stored_only_as_a_hash(visitor):
    session_id, token = create_session(visitor)
    assert len(token) >= 40
    row = AssessmentSession.objects.get(pk=session_id)
    assert row.token_hash == hashlib.sha256(token.encode()).hexdigest()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM assessments_assessmentsession t WHERE row_to_json(t)::text "
            "LIKE %s",
            [f"%{token}%"],
        )
        assert cursor.fetchone()[0] == 0
    again = visitor.post(
        SESSION_URL,
        {"sessionId": session_id, "status": "in_progress"},
        "json",
        HTTP_X_SESSION_TOKEN=token,
    )
    assert again.status_code == 200, again.content
    assert "sessionToken" not in again.json()


def test_with_the_token_the_visitor_reads_and_writes_but_never_sees_personal_fields(visitor):
    session_id, token = create_session(visitor)
    headers = {"HTTP_X_SESSION_TOKEN": token}
    created = AssessmentSession.objects.get(pk=session_id)
    assert (created.email, created.first_name, created.form_data) == (
        "ada@example.com",
        "Ada",
        {"phone": "555"},
    )
    read = visitor.get(f"{SESSION_URL}/{session_id}", **headers)
    assert read.status_code == 200
    assert not PRIVATE_FIELDS & set(read.json()) and read.json()["id"] == session_id
    answered = visitor.post(
        f"{SESSION_URL}/{session_id}/answers", {"questionId": "q1", "answer": 3}, "json", **headers
    )
    assert answered.status_code == 200 and answered.json()["responses"] == {"q1": 3}
    assert not PRIVATE_FIELDS & set(answered.json())
    moved = visitor.post(
        SESSION_URL, {"sessionId": session_id, "status": "in_progress"}, "json", **headers
    )
    assert moved.status_code == 200 and not PRIVATE_FIELDS & set(moved.json())
    submitted = visitor.post("/api/assessments/submit", submit_body(session_id), "json", **headers)
    assert submitted.status_code == 201, submitted.content
    assert AssessmentSession.objects.get(pk=session_id).status == "completed"


def test_the_creating_answer_has_no_personal_fields_either(visitor):
    response = visitor.post(SESSION_URL, session_body(email="a@example.com"), format="json")
    assert response.status_code == 201
    assert not PRIVATE_FIELDS & set(response.json())


def test_a_session_created_without_a_token_is_closed_to_publishable_keys(browser_api, tenant):
    session = SessionFactory(tenant=tenant, token_hash=None)
    response = browser_api.get(f"{SESSION_URL}/{session.id}")  # sends SESSION_TOKEN
    assert_error(response, 403, "invalid_session_token")


def test_secret_keys_keep_full_access_without_a_token(visitor, api):
    session_id, _token = create_session(visitor)
    read = api.get(f"{SESSION_URL}/{session_id}")
    assert read.status_code == 200
    body = read.json()
    assert (body["email"], body["firstName"], body["formData"]) == (
        "ada@example.com",
        "Ada",
        {"phone": "555"},
    )
    moved = api.post(SESSION_URL, {"sessionId": session_id, "status": "in_progress"}, "json")
    assert moved.status_code == 200 and moved.json()["email"] == "ada@example.com"
    answered = api.post(
        f"{SESSION_URL}/{session_id}/answers", {"questionId": "q", "answer": 1}, "json"
    )
    assert answered.status_code == 200
    assert api.post("/api/assessments/submit", submit_body(session_id), "json").status_code == 201


def test_another_tenants_session_stays_404_with_or_without_a_token(other_tenant, publishable_key):
    session = SessionFactory(tenant=other_tenant)  # its token is SESSION_TOKEN
    for headers in ({}, {"HTTP_X_SESSION_TOKEN": SESSION_TOKEN}, {"HTTP_X_SESSION_TOKEN": "x"}):
        client = client_for(publishable_key, HTTP_ORIGIN=ORIGIN, **headers)
        assert_error(client.get(f"{SESSION_URL}/{session.id}"), 404, "not_found")
        assert_error(
            client.post(SESSION_URL, {"sessionId": str(session.id), "status": "abandoned"}, "json"),
            404,
            "not_found",
        )
    assert AssessmentSession.objects.get(pk=session.id).status == "started"


def test_a_publishable_submit_needs_an_existing_session(visitor):
    # The browser creates its session (and gets its token) first: a retried submit then still
    # holds the token. A submit into no session is 404, like another tenant's.
    body = submit_body(uuid.uuid4(), email="new@example.com")
    assert_error(visitor.post("/api/assessments/submit", body, "json"), 404, "not_found")
    assert AssessmentSession.objects.count() == 0 and Submission.objects.count() == 0
    assert OutboxEvent.objects.count() == 0


def test_a_retried_submit_with_the_token_is_replayed(visitor):
    session_id, token = create_session(visitor)
    body = submit_body(session_id)
    first = visitor.post("/api/assessments/submit", body, "json", HTTP_X_SESSION_TOKEN=token)
    again = visitor.post("/api/assessments/submit", body, "json", HTTP_X_SESSION_TOKEN=token)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again["Idempotent-Replayed"] == "true" and again.json() == first.json()
    assert Submission.objects.count() == 1 and OutboxEvent.objects.count() == 1


# --- beacons and events --------------------------------------------------------------------


def test_the_abandon_beacon_carries_the_token_in_its_text_plain_body(visitor, publishable_key):
    session_id, token = create_session(visitor)
    beacon = client_for(None, HTTP_ORIGIN=ORIGIN)
    url = f"{SESSION_URL}?key={publishable_key}"
    without = beacon.post(
        url, json.dumps({"sessionId": session_id, "status": "abandoned"}), content_type="text/plain"
    )
    assert_error(without, 403, "session_token_required")
    assert AssessmentSession.objects.get(pk=session_id).status == "started"
    body = {"sessionId": session_id, "status": "abandoned", "sessionToken": token}
    response = beacon.post(url, json.dumps(body), content_type="text/plain;charset=UTF-8")
    assert response.status_code == 200, response.content
    assert AssessmentSession.objects.get(pk=session_id).status == "abandoned"


def test_a_token_in_a_json_body_is_not_accepted(visitor, stranger):
    session_id, token = create_session(visitor)
    body = {"sessionId": session_id, "status": "abandoned", "sessionToken": token}
    assert_error(stranger.post(SESSION_URL, body, "json"), 403, "session_token_required")


def test_analytics_events_need_no_token(visitor):
    session_id, _token = create_session(visitor)
    response = visitor.post(
        "/api/assessments/events", {"events": [event_body(sessionId=session_id)]}, "json"
    )
    assert response.status_code == 200 and response.json()["accepted"] == 1
    assert AnalyticsEvent.objects.filter(session_id=session_id).count() == 1
