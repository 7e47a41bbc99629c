"""The input declarations (assessments.inputs) are what validates and what /api/schema/
documents: one table each."""

import uuid

import pytest

from assessments import event_inputs, inputs
from tests.tenancy import assert_error

pytestmark = pytest.mark.django_db

SHAPES = [inputs.SESSION_IN, inputs.ANSWERS_IN, inputs.SUBMIT_IN, event_inputs.EVENTS_IN]


@pytest.fixture(scope="module")
def components(django_db_setup, django_db_blocker):
    from rest_framework.test import APIClient

    with django_db_blocker.unblock():
        response = APIClient().get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    return response.json()["components"]["schemas"]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda shape: shape.name)
def test_schema_of_each_input_is_its_declaration(components, shape):
    documented = components[f"{shape.name}Request"]  # COMPONENT_SPLIT_REQUEST names
    assert list(documented["properties"]) == [field.key for field in shape.fields]
    assert documented.get("required", []) == [f.key for f in shape.fields if f.required]


def test_event_schema_lists_the_checked_fields_and_limits(components, settings):
    events = components["AssessmentEventsInRequest"]["properties"]["events"]
    assert events["maxItems"] == settings.ASSESSMENTS_EVENTS_MAX_PER_REQUEST
    assert events["items"]["required"] == ["messageId", "name", "timestamp"]
    assert events["items"]["properties"]["messageId"]["maxLength"] == 100


def test_session_status_is_documented_as_its_allowed_values(components):
    status = components["AssessmentSessionInRequest"]["properties"]["status"]
    enum = components[status["$ref"].rsplit("/", 1)[1]]["enum"] if "$ref" in status else status
    assert set(enum) >= {"started", "in_progress", "completed", "abandoned"}


def test_a_refused_field_is_named_in_details(browser_api):
    body = {"sessionId": str(uuid.uuid4()), "status": "started", "email": "nope"}
    error = assert_error(
        browser_api.post("/api/assessments/session", body, "json"), 400, "invalid_email"
    )
    assert error["details"] == {"field": "email"}


def test_the_first_refused_field_in_declared_order_answers(browser_api):
    body = {"sessionId": "x", "status": "nope", "email": "nope"}
    error = assert_error(
        browser_api.post("/api/assessments/session", body, "json"), 400, "invalid_session_id"
    )
    assert error["details"] == {"field": "sessionId"}


def test_a_rule_across_fields_runs_in_its_place(browser_api, settings):
    settings.ASSESSMENTS_SUBMISSION_MAX_BYTES = 100
    body = {
        "submissionId": str(uuid.uuid4()),
        "sessionId": str(uuid.uuid4()),
        "answers": {"q": "x" * 200},
        "email": "not-an-email",  # after the size rule: the size answers first
    }
    assert_error(
        browser_api.post("/api/assessments/submit", body, "json"), 413, "submission_too_large"
    )
