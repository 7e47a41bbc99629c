"""A secret key in a URL lands in access logs, browser history and proxies: refused."""

from __future__ import annotations

import pytest

from assessments.models import AssessmentSession
from tests.assessments.factories import session_body
from tests.tenancy import assert_error

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("post", "/api/assessments/session"),
        ("post", "/api/assessments/events"),
        ("get", "/api/keys"),
        ("get", "/api/assessments/submissions"),
    ],
)
def test_a_secret_key_in_the_query_string_is_400(anon_api, secret_key, method, path):
    # Before: ignored on beacon endpoints (401) and silently dropped elsewhere.
    url = f"{path}?key={secret_key}"
    send = anon_api.get if method == "get" else anon_api.post
    response = send(url, **({} if method == "get" else {"data": session_body(), "format": "json"}))
    error = assert_error(response, 400, "secret_key_in_url")
    assert error["details"] == {"parameter": "key"}
    assert secret_key not in response.content.decode()
    assert AssessmentSession.objects.count() == 0


def test_also_under_another_parameter_name_and_with_a_header_key(api, secret_key):
    response = api.get(f"/api/keys?api_key={secret_key}")
    assert_error(response, 400, "secret_key_in_url")


def test_a_publishable_key_in_the_query_string_still_works_for_beacons(publishable_key):
    import json

    from tests.conftest import ORIGIN, client_for

    client = client_for(None, HTTP_ORIGIN=ORIGIN)
    response = client.post(
        f"/api/assessments/events?key={publishable_key}",
        json.dumps({"events": []}),
        content_type="text/plain",
    )
    assert response.status_code == 200, response.content
