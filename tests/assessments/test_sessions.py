import uuid

import pytest
from django.db import IntegrityError, transaction

from assessments.models import AssessmentSession
from tests.assessments.factories import SessionFactory, session_body
from tests.tenancy import assert_error, assert_tenant_isolated

URL = "/api/assessments/session"
pytestmark = pytest.mark.django_db


def create(client, body) -> dict:
    """POST a new session; the headers that carry its token on the next calls."""
    response = client.post(URL, body, format="json")
    assert response.status_code == 201, response.content
    return {"HTTP_X_SESSION_TOKEN": response.json()["sessionToken"]}


def test_first_post_creates_session_with_client_id(browser_api, tenant):
    body = session_body(
        email="ada@example.com", firstName="Ada", formData={"age": 36}, metadata={"src": "ad"}
    )
    response = browser_api.post(URL, body, format="json")
    assert response.status_code == 201, response.json()
    row = AssessmentSession.objects.get(pk=body["sessionId"])
    assert (row.tenant_id, row.status, row.email, row.first_name) == (
        tenant.id,
        "started",
        "ada@example.com",
        "Ada",
    )
    assert row.form_data == {"age": 36} and row.metadata == {"src": "ad"}
    assert row.last_activity_at is not None
    assert response.json()["id"] == body["sessionId"]
    assert response.json()["metadata"] == {"src": "ad"}
    assert response.json()["sessionToken"]
    # a publishable key never reads personal fields back (core.session_proof)
    assert not {"email", "firstName", "formData"} & set(response.json())


def test_status_moves_forward_and_merges_fields(browser_api):
    body = session_body(formData={"a": 1})
    token = create(browser_api, body)
    response = browser_api.post(
        URL, {**body, "status": "in_progress", "formData": {"b": 2}}, format="json", **token
    )
    assert response.status_code == 200
    assert response.json()["status"] == "in_progress"
    assert AssessmentSession.objects.get(pk=body["sessionId"]).form_data == {"a": 1, "b": 2}


@pytest.mark.parametrize(
    "first,late,expected",
    [
        ("in_progress", "started", "in_progress"),
        ("completed", "in_progress", "completed"),
        ("completed", "abandoned", "completed"),
        ("completed", "started", "completed"),
        ("abandoned", "started", "abandoned"),
        ("abandoned", "in_progress", "in_progress"),  # a visitor came back
        ("in_progress", "abandoned", "abandoned"),
        ("started", "completed", "completed"),
    ],
)
def test_late_updates_never_move_backwards(browser_api, first, late, expected):
    body = session_body(status=first)
    token = create(browser_api, body)
    response = browser_api.post(URL, {**body, "status": late}, format="json", **token)
    assert response.status_code == 200
    assert response.json()["status"] == expected
    assert AssessmentSession.objects.get(pk=body["sessionId"]).status == expected


def test_completed_session_is_final_including_fields(browser_api):
    body = session_body(status="completed", email="a@example.com")
    token = create(browser_api, body)
    row = AssessmentSession.objects.get(pk=body["sessionId"])
    assert row.completed_at is not None
    response = browser_api.post(
        URL, {**body, "status": "in_progress", "email": "late@example.com"}, "json", **token
    )
    assert response.status_code == 200
    again = AssessmentSession.objects.get(pk=body["sessionId"])
    assert (again.status, again.email, again.updated_at, again.completed_at) == (
        "completed",
        "a@example.com",
        row.updated_at,
        row.completed_at,
    )


def test_abandoned_sets_abandoned_at_and_repeat_is_harmless(browser_api):
    body = session_body(status="in_progress")
    token = create(browser_api, body)
    first = browser_api.post(URL, {**body, "status": "abandoned"}, "json", **token).json()
    assert first["status"] == "abandoned" and first["abandonedAt"]
    second = browser_api.post(URL, {**body, "status": "abandoned"}, "json", **token).json()
    assert second["abandonedAt"] == first["abandonedAt"]
    assert AssessmentSession.objects.count() == 1


def test_beacon_text_plain_with_key_in_query(publishable_key):
    from tests.conftest import ORIGIN, client_for

    client = client_for(None, HTTP_ORIGIN=ORIGIN)
    body = session_body(status="abandoned")
    import json

    response = client.post(
        f"{URL}?key={publishable_key}", json.dumps(body), content_type="text/plain;charset=UTF-8"
    )
    assert response.status_code == 201, response.content
    assert AssessmentSession.objects.get(pk=body["sessionId"]).status == "abandoned"


def test_secret_key_in_query_is_refused(secret_key, anon_api):
    response = anon_api.post(f"{URL}?key={secret_key}", session_body(), format="json")
    assert_error(response, 400, "secret_key_in_url")
    assert AssessmentSession.objects.count() == 0


def test_get_session(browser_api, tenant):
    session = SessionFactory(tenant=tenant, responses={"q1": 1})
    response = browser_api.get(f"{URL}/{session.id}")
    assert response.status_code == 200
    assert response.json()["responses"] == {"q1": 1}
    assert response.json()["status"] == "started"


def test_get_unknown_session_is_404(browser_api):
    assert_error(browser_api.get(f"{URL}/{uuid.uuid4()}"), 404, "not_found")


def test_get_session_with_bad_id(browser_api):
    assert_error(browser_api.get(f"{URL}/not-a-uuid"), 400, "invalid_session_id")


def test_session_read_is_tenant_isolated(other_api, tenant):
    session = SessionFactory(tenant=tenant)
    assert_tenant_isolated(other_api, "get", f"{URL}/{session.id}")


def test_session_upsert_of_another_tenants_id_is_404_and_changes_nothing(other_api, tenant):
    session = SessionFactory(tenant=tenant, email="a@example.com")

    def snapshot():
        return AssessmentSession.objects.filter(pk=session.pk).values().get()

    assert_tenant_isolated(
        other_api,
        "post",
        URL,
        {"sessionId": str(session.id), "status": "completed", "email": "evil@example.com"},
        unchanged=snapshot,
    )


@pytest.mark.parametrize(
    "overrides,code",
    [
        ({"sessionId": "nope"}, "invalid_session_id"),
        ({"sessionId": None}, "invalid_session_id"),
        ({"sessionId": 12}, "invalid_session_id"),
        ({"status": "finished"}, "invalid_status"),
        ({"status": None}, "invalid_status"),
        ({"email": "not-an-email"}, "invalid_email"),
        ({"email": "a b@example.com"}, "invalid_email"),
        ({"email": 5}, "invalid_email"),
        ({"firstName": "   "}, "invalid_first_name"),
        ({"firstName": "x" * 201}, "invalid_first_name"),
        ({"formData": [1, 2]}, "invalid_form_data"),
        ({"formData": "x"}, "invalid_form_data"),
        ({"metadata": [1]}, "invalid_metadata"),
    ],
)
def test_bad_session_input_has_its_own_code(browser_api, overrides, code):
    response = browser_api.post(URL, session_body(**overrides), format="json")
    assert_error(response, 400, code)
    assert AssessmentSession.objects.count() == 0


def test_missing_status_is_invalid_status(browser_api):
    response = browser_api.post(URL, {"sessionId": str(uuid.uuid4())}, format="json")
    assert_error(response, 400, "invalid_status")


def test_non_object_body_is_invalid_body(browser_api):
    assert_error(browser_api.post(URL, [1, 2], format="json"), 400, "invalid_body")
    assert AssessmentSession.objects.count() == 0


def test_malformed_json_is_rejected(browser_api):
    response = browser_api.post(URL, "{nope", content_type="application/json")
    assert_error(response, 400, "malformed_json")


def test_no_key_is_401(anon_api):
    assert_error(anon_api.post(URL, session_body(), format="json"), 401, "authentication_required")


@pytest.mark.parametrize(
    "field,value",
    [
        ("email", "no-at-sign"),
        ("first_name", "  "),
        ("status", "finished"),
        ("form_data", [1]),
        ("responses", "text"),
    ],
)
def test_database_refuses_invalid_rows(tenant, field, value):
    with pytest.raises(IntegrityError), transaction.atomic():
        SessionFactory(tenant=tenant, **{field: value})


@pytest.mark.django_db(transaction=True)
def test_concurrent_out_of_order_updates_end_completed(tenant, secret_key):
    """30 threads race to create/update one session; one of them says completed. Whatever the
    order, there is one row and it ends completed (never rewound by a late update). A secret
    key: with a publishable one only the creator holds the token (tested in
    test_session_token)."""
    import threading

    from django.db import connections

    from tests.conftest import client_for

    session_id = str(uuid.uuid4())
    statuses = ["started", "in_progress", "abandoned"] * 10
    statuses[17] = "completed"
    barrier = threading.Barrier(len(statuses))
    codes, lock = [], threading.Lock()

    def send(status):
        try:
            client = client_for(secret_key)
            barrier.wait(timeout=30)
            response = client.post(URL, {"sessionId": session_id, "status": status}, "json")
            with lock:
                codes.append(response.status_code)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=send, args=(s,)) for s in statuses]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(codes) == [200] * 29 + [201]
    row = AssessmentSession.objects.get(pk=session_id)
    assert row.status == "completed" and row.completed_at is not None
    # and a late update after the race changes nothing
    client_for(secret_key).post(URL, {"sessionId": session_id, "status": "started"}, "json")
    assert AssessmentSession.objects.get(pk=session_id).status == "completed"
