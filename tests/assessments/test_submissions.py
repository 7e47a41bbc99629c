import threading
import uuid

import pytest
from django.db import connections

from assessments.models import AssessmentSession, Submission
from outbox.models import OutboxEvent
from tests.assessments.factories import (
    SESSION_TOKEN,
    SessionFactory,
    SubmissionFactory,
    submit_body,
)
from tests.conftest import ORIGIN, client_for
from tests.tenancy import assert_error, assert_tenant_isolated

URL = "/api/assessments/submit"


@pytest.mark.django_db
def test_first_submit_stores_completes_session_and_enqueues_event(browser_api, tenant):
    session = SessionFactory(tenant=tenant, status="in_progress", email="ada@example.com")
    body = submit_body(session.id, metadata={"v": 2})
    response = browser_api.post(URL, body, format="json")
    assert response.status_code == 201, response.json()
    assert "Idempotent-Replayed" not in response.headers
    assert response.json()["id"] == body["submissionId"]
    assert response.json()["answers"] == body["answers"]

    row = Submission.objects.get()
    assert str(row.id) == body["submissionId"] and row.tenant_id == tenant.id
    assert row.result == {"score": 7} and row.metadata == {"v": 2}
    session.refresh_from_db()
    assert session.status == "completed" and session.completed_at is not None
    assert session.responses == body["answers"]

    event = OutboxEvent.objects.get()
    assert (event.event_type, event.topic, event.tenant_id) == (
        "assessment.submitted",
        "assessments",
        tenant.id,
    )
    assert event.idempotency_key == f"assessment.submitted:{body['submissionId']}"
    assert event.payload["submissionId"] == body["submissionId"]
    assert event.payload["email"] == "ada@example.com"
    assert event.payload["answers"] == body["answers"]


@pytest.mark.django_db
def test_submit_without_prior_session_creates_it_completed(api, tenant):
    # a secret key may; a publishable key needs its session first (test_session_token)
    body = submit_body(email="b@example.com", firstName="Bo")
    assert api.post(URL, body, format="json").status_code == 201
    session = AssessmentSession.objects.get(pk=body["sessionId"])
    assert (session.tenant_id, session.status, session.email, session.first_name) == (
        tenant.id,
        "completed",
        "b@example.com",
        "Bo",
    )


@pytest.mark.django_db
def test_replayed_submission_returns_original(browser_api, tenant):
    body = submit_body(SessionFactory(tenant=tenant).id)
    first = browser_api.post(URL, body, format="json")
    # same payload, keys in another order
    second = browser_api.post(URL, dict(reversed(list(body.items()))), format="json")
    assert second.status_code == 200
    assert second.headers["Idempotent-Replayed"] == "true"
    assert second.json() == first.json()
    assert Submission.objects.count() == 1 and OutboxEvent.objects.count() == 1


@pytest.mark.django_db
def test_reused_submission_id_with_other_payload_is_422(browser_api, tenant):
    body = submit_body(SessionFactory(tenant=tenant).id)
    browser_api.post(URL, body, format="json")
    response = browser_api.post(URL, {**body, "answers": {"q1": "no"}}, format="json")
    assert_error(response, 422, "idempotency_key_reused")
    assert Submission.objects.get().answers == body["answers"]
    assert OutboxEvent.objects.count() == 1


@pytest.mark.django_db
def test_other_tenant_reusing_a_submission_id_gets_422_and_sees_nothing(
    browser_api, other_api, tenant
):
    body = submit_body(SessionFactory(tenant=tenant).id)
    browser_api.post(URL, body, format="json")
    response = other_api.post(URL, body, format="json")
    error = assert_error(response, 422, "idempotency_key_reused")
    assert "answers" not in str(error)
    assert Submission.objects.count() == 1 and OutboxEvent.objects.count() == 1


@pytest.mark.django_db
def test_submit_into_another_tenants_session_is_404_and_rolls_back(other_api, tenant):
    session = SessionFactory(tenant=tenant, status="in_progress")
    response = other_api.post(URL, submit_body(session.id), format="json")
    assert_error(response, 404, "not_found")
    assert Submission.objects.count() == 0 and OutboxEvent.objects.count() == 0
    session.refresh_from_db()
    assert session.status == "in_progress"


@pytest.mark.django_db
def test_second_submission_for_completed_session_is_kept(browser_api, tenant):
    session = SessionFactory(tenant=tenant, status="completed")
    response = browser_api.post(URL, submit_body(session.id), format="json")
    assert response.status_code == 201
    assert Submission.objects.filter(session=session).count() == 1


@pytest.mark.django_db
@pytest.mark.parametrize(
    "overrides,code,status",
    [
        ({"submissionId": None}, "invalid_submission_id", 400),
        ({"submissionId": "abc"}, "invalid_submission_id", 400),
        ({"submissionId": 42}, "invalid_submission_id", 400),
        ({"sessionId": "abc"}, "invalid_session_id", 400),
        ({"answers": None}, "invalid_answers", 400),
        ({"answers": ["a"]}, "invalid_answers", 400),
        ({"result": [1]}, "invalid_result", 400),
        ({"result": "x"}, "invalid_result", 400),
        ({"metadata": "x"}, "invalid_metadata", 400),
        ({"email": "nope"}, "invalid_email", 400),
        ({"firstName": ""}, "invalid_first_name", 400),
        ({"answers": {"q": "x" * 210_000}}, "submission_too_large", 413),
    ],
)
def test_bad_submission_input_has_its_own_code(browser_api, overrides, code, status):
    assert_error(browser_api.post(URL, submit_body(**overrides), format="json"), status, code)
    assert Submission.objects.count() == 0
    assert AssessmentSession.objects.count() == 0 and OutboxEvent.objects.count() == 0


@pytest.mark.django_db
def test_missing_submission_id_is_invalid_submission_id(browser_api):
    body = submit_body()
    del body["submissionId"]
    assert_error(browser_api.post(URL, body, format="json"), 400, "invalid_submission_id")


@pytest.mark.django_db
def test_submit_body_must_be_object(browser_api):
    assert_error(browser_api.post(URL, [1], format="json"), 400, "invalid_body")


@pytest.mark.django_db(transaction=True)
def test_twenty_concurrent_identical_submissions_make_one_row(tenant, publishable_key):
    body = submit_body(SessionFactory(tenant=tenant).id)
    barrier = threading.Barrier(20)
    results, lock = [], threading.Lock()

    def submit():
        try:
            client = client_for(
                publishable_key, HTTP_ORIGIN=ORIGIN, HTTP_X_SESSION_TOKEN=SESSION_TOKEN
            )
            barrier.wait(timeout=30)
            response = client.post(URL, body, format="json")
            with lock:
                results.append((response.status_code, response.json()))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=submit) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert len(results) == 20
    assert sorted(code for code, _ in results).count(201) == 1
    assert {code for code, _ in results} == {200, 201}
    assert all(payload == results[0][1] for _, payload in results)
    assert Submission.objects.count() == 1
    assert OutboxEvent.objects.filter(event_type="assessment.submitted").count() == 1
    assert AssessmentSession.objects.get(pk=body["sessionId"]).status == "completed"


# --- read endpoints (secret key) -------------------------------------------------------------


@pytest.mark.django_db
def test_list_submissions_by_session(api, tenant):
    session = SessionFactory(tenant=tenant)
    mine = SubmissionFactory.create_batch(2, session=session)
    SubmissionFactory(session=SessionFactory(tenant=tenant))
    response = api.get(f"/api/assessments/submissions?sessionId={session.id}")
    assert response.status_code == 200
    assert {item["id"] for item in response.json()["results"]} == {str(s.id) for s in mine}


@pytest.mark.django_db
def test_list_submissions_paginates_and_is_tenant_scoped(api, other_api, tenant):
    SubmissionFactory.create_batch(3, session=SessionFactory(tenant=tenant))
    page = api.get("/api/assessments/submissions?limit=2").json()
    assert len(page["results"]) == 2 and page["next"]
    rest = api.get(page["next"]).json()
    assert len(rest["results"]) == 1
    assert other_api.get("/api/assessments/submissions").json()["results"] == []
    session_id = Submission.objects.first().session_id
    filtered = other_api.get(f"/api/assessments/submissions?sessionId={session_id}")
    assert filtered.status_code == 200 and filtered.json()["results"] == []


@pytest.mark.django_db
def test_list_with_bad_session_id(api):
    response = api.get("/api/assessments/submissions?sessionId=x")
    assert_error(response, 400, "invalid_session_id")


@pytest.mark.django_db
def test_get_submission(api, tenant):
    submission = SubmissionFactory(session=SessionFactory(tenant=tenant), result={"s": 1})
    response = api.get(f"/api/assessments/submissions/{submission.id}")
    assert response.status_code == 200
    assert response.json()["result"] == {"s": 1}
    assert response.json()["sessionId"] == str(submission.session_id)


@pytest.mark.django_db
def test_get_submission_errors(api, other_api, tenant):
    submission = SubmissionFactory(session=SessionFactory(tenant=tenant))
    assert_tenant_isolated(other_api, "get", f"/api/assessments/submissions/{submission.id}")
    assert_error(api.get(f"/api/assessments/submissions/{uuid.uuid4()}"), 404, "not_found")
    assert_error(api.get("/api/assessments/submissions/x"), 400, "invalid_submission_id")


@pytest.mark.django_db
def test_submission_reads_need_a_secret_key(browser_api, tenant):
    submission = SubmissionFactory(session=SessionFactory(tenant=tenant))
    for path in ("/api/assessments/submissions", f"/api/assessments/submissions/{submission.id}"):
        assert_error(browser_api.get(path), 403, "secret_key_required")
