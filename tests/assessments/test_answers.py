import threading
import time
import uuid

import pytest
from django.db import connection, connections
from django.test.utils import CaptureQueriesContext

from assessments.models import AssessmentSession
from assessments.services import session_answers_merge
from tests.assessments.factories import SESSION_TOKEN, SessionFactory
from tests.tenancy import assert_error, assert_tenant_isolated


def url(session_id):
    return f"/api/assessments/session/{session_id}/answers"


@pytest.mark.django_db
def test_single_answer_is_merged(browser_api, tenant):
    session = SessionFactory(tenant=tenant, responses={"q1": "a"})
    response = browser_api.post(url(session.id), {"questionId": "q2", "answer": [1, 2]}, "json")
    assert response.status_code == 200, response.json()
    assert response.json()["responses"] == {"q1": "a", "q2": [1, 2]}
    session.refresh_from_db()
    assert session.responses == {"q1": "a", "q2": [1, 2]}
    assert session.status == "in_progress"  # answering starts the run


@pytest.mark.django_db
def test_batch_answers_overwrite_same_question(browser_api, tenant):
    session = SessionFactory(tenant=tenant, status="in_progress", responses={"q1": "old"})
    before = session.updated_at
    response = browser_api.post(url(session.id), {"answers": {"q1": "new", "q3": None}}, "json")
    assert response.status_code == 200
    session.refresh_from_db()
    assert session.responses == {"q1": "new", "q3": None}
    assert session.updated_at > before  # the atomic UPDATE still moves updated_at


@pytest.mark.django_db
def test_answer_resumes_abandoned_session(browser_api, tenant):
    session = SessionFactory(tenant=tenant, status="abandoned")
    browser_api.post(url(session.id), {"questionId": "q1", "answer": 1}, "json")
    session.refresh_from_db()
    assert session.status == "in_progress"


@pytest.mark.django_db
def test_merge_is_one_update_statement(tenant):
    session = SessionFactory(tenant=tenant)
    with CaptureQueriesContext(connection) as queries:
        session_answers_merge(tenant_id=tenant.id, session_id=session.id, answers={"q": 1})
    writes = [q["sql"] for q in queries.captured_queries if not q["sql"].startswith("SELECT")]
    assert len(writes) == 1 and writes[0].startswith("UPDATE"), writes
    assert "||" in writes[0]


@pytest.mark.django_db
def test_answers_to_completed_session_are_refused(browser_api, tenant):
    session = SessionFactory(tenant=tenant, status="completed", responses={"q1": 1})
    response = browser_api.post(url(session.id), {"questionId": "q1", "answer": 2}, "json")
    assert_error(response, 409, "session_completed")
    session.refresh_from_db()
    assert session.responses == {"q1": 1}


@pytest.mark.django_db
def test_unknown_session_is_404(browser_api):
    response = browser_api.post(url(uuid.uuid4()), {"questionId": "q1", "answer": 2}, "json")
    assert_error(response, 404, "not_found")


@pytest.mark.django_db
def test_answers_are_tenant_isolated(other_api, tenant):
    session = SessionFactory(tenant=tenant, responses={"q1": 1})
    assert_tenant_isolated(
        other_api,
        "post",
        url(session.id),
        {"questionId": "q1", "answer": "hijack"},
        unchanged=lambda: AssessmentSession.objects.get(pk=session.pk).responses,
    )


@pytest.mark.django_db
@pytest.mark.parametrize(
    "body,code,status",
    [
        ({}, "invalid_answers", 400),
        ({"questionId": "q1", "answer": 1, "answers": {"q2": 1}}, "invalid_answers", 400),
        ({"answers": {}}, "invalid_answers", 400),
        ({"answers": [1]}, "invalid_answers", 400),
        ({"questionId": "q1"}, "missing_answer", 400),
        ({"questionId": "", "answer": 1}, "invalid_question_id", 400),
        ({"questionId": "has space", "answer": 1}, "invalid_question_id", 400),
        ({"questionId": 5, "answer": 1}, "invalid_question_id", 400),
        ({"answers": {f"q{i}": i for i in range(201)}}, "too_many_answers", 400),
        ({"questionId": "q1", "answer": "x" * 40000}, "answer_too_large", 413),
    ],
)
def test_bad_answer_input_has_its_own_code(browser_api, tenant, body, code, status):
    session = SessionFactory(tenant=tenant, responses={"q0": 0})
    assert_error(browser_api.post(url(session.id), body, "json"), status, code)
    session.refresh_from_db()
    assert session.responses == {"q0": 0} and session.status == "started"


@pytest.mark.django_db
def test_bad_session_id_in_path(browser_api):
    response = browser_api.post(url("nope"), {"questionId": "q1", "answer": 1}, "json")
    assert_error(response, 400, "invalid_session_id")


def wait_for_free_connections(needed: int, timeout: float = 15.0) -> int:
    """The PostgreSQL server is shared (max_connections): wait (a little) for room, so the
    test measures our UPDATE rather than a neighbour's connection burst. Requests are short,
    so the 100 threads rarely hold 100 connections at the same instant."""
    deadline = time.monotonic() + timeout
    while True:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT current_setting('max_connections')::int"
                " - current_setting('superuser_reserved_connections')::int - count(*)"
                " FROM pg_stat_activity"
            )
            free = cursor.fetchone()[0]
        if free >= needed or time.monotonic() > deadline:
            return free
        time.sleep(0.5)


@pytest.mark.django_db(transaction=True)
def test_hundred_concurrent_answers_are_all_stored(tenant, publishable_key):
    """100 real threads, each its own DB connection, answering different questions at once."""
    from tests.conftest import ORIGIN, client_for

    session = SessionFactory(tenant=tenant)
    free = wait_for_free_connections(60)
    barrier = threading.Barrier(100)
    statuses, lock = [], threading.Lock()

    def answer(i):
        try:
            client = client_for(
                publishable_key, HTTP_ORIGIN=ORIGIN, HTTP_X_SESSION_TOKEN=SESSION_TOKEN
            )
            barrier.wait(timeout=30)
            response = client.post(url(session.id), {"questionId": f"q{i}", "answer": i}, "json")
            with lock:
                statuses.append(response.status_code)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=answer, args=(i,)) for i in range(100)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert statuses == [200] * 100, (sorted(set(statuses)), f"{free} free connections")
    session.refresh_from_db()
    assert session.responses == {f"q{i}": i for i in range(100)}
