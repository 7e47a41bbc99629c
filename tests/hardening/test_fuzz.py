"""Schemathesis against /api/schema/ for every endpoint, in-process (WSGI) on PostgreSQL.

Bounded here (FUZZ_EXAMPLES, default 8 per operation) so `make test` stays fast; `make fuzz`
runs many more. Checks: no 5xx, documented status codes and content types, responses match
the schema, and every 4xx/5xx uses the one error shape.
"""

from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from config.wsgi import application

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "8"))
# Endpoints that are not request/response JSON: the SSE stream never ends, docs are HTML.
EXCLUDED_PATHS = r"^/api/(realtime/stream|docs/|schema/)"

schema = schemathesis.openapi.from_wsgi("/api/schema/?format=json", application)
schema = schema.exclude(path_regex=EXCLUDED_PATHS)


@schemathesis.check
def uses_error_shape(ctx, response, case):
    if response.status_code < 400:
        return None
    if case.path.startswith("/api/uploads/tus") and response.status_code in {409, 410, 412, 460}:
        pass  # tus statuses: still our JSON shape, checked below
    body = response.json()
    assert set(body) == {"error"}, f"error body is not the one shape: {body}"
    error = body["error"]
    assert isinstance(error.get("code"), str) and error["code"], body
    assert isinstance(error.get("message"), str), body
    assert isinstance(error.get("details"), dict), body
    return None


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    uses_error_shape,
]


@pytest.fixture
def fuzz_headers(secret_key):
    return {"Authorization": f"Bearer {secret_key}"}


@pytest.fixture(autouse=True)
def _keep_test_connection():
    """Raw WSGI calls fire request_started/finished, which would close the test's database
    connection mid-transaction; Django's own test client disconnects them the same way."""
    from django.core.signals import request_finished, request_started
    from django.db import close_old_connections

    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.mark.django_db
@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_api_conforms_to_its_schema(case, fuzz_headers, settings):
    settings.THROTTLE_ENABLED = False
    settings.STRIPE_WEBHOOK_SECRET = ["whsec_fuzz"]  # configured: bad signatures get 400
    case.call_and_validate(headers=fuzz_headers, checks=CHECKS)
