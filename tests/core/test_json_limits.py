"""JSON that PostgreSQL's jsonb or Python's parser cannot take is a 400 at the parser, never
a 500 further down, and it leaves no row behind."""

import uuid

import pytest

from assessments.models import AssessmentSession
from tests.tenancy import assert_error

pytestmark = pytest.mark.django_db

SESSION_URL = "/api/assessments/session"


def _post(api, form_data: str):
    body = (
        '{"sessionId": "'
        + str(uuid.uuid4())
        + '", "status": "started", "formData": '
        + form_data
        + "}"
    )
    return api.generic("POST", SESSION_URL, body, content_type="application/json")


@pytest.mark.parametrize("number", ["1e999", "-1e999", "1E+400"])
def test_non_finite_number_is_400_invalid_json_number(api, number):
    response = _post(api, '{"score": ' + number + "}")
    error = assert_error(response, 400, "invalid_json_number")
    assert error["details"]["path"] == "$.formData.score"
    assert AssessmentSession.objects.count() == 0


def test_nesting_deeper_than_64_levels_is_400_json_too_deep(api):
    nested = "[" * 64 + "]" * 64  # formData is level 2: its list reaches level 66
    assert_error(_post(api, '{"x": ' + nested + "}"), 400, "json_too_deep")
    assert AssessmentSession.objects.count() == 0


def test_nesting_that_overflows_the_parser_is_400_json_too_deep(api):
    nested = "[" * 100_000 + "]" * 100_000
    assert_error(_post(api, nested), 400, "json_too_deep")


def test_nan_and_infinity_literals_are_not_json(api):
    # Python's json would read them; the parser refuses them as what they are: not JSON
    for literal in ("NaN", "Infinity", "-Infinity"):
        assert_error(_post(api, '{"score": ' + literal + "}"), 400, "malformed_json")


def test_nesting_of_64_levels_is_accepted(api):
    nested = "[" * 61 + "]" * 61  # root 1, formData 2, x 3: 61 more lists end at level 64
    response = _post(api, '{"x": ' + nested + "}")
    assert response.status_code in (200, 201), response.content
