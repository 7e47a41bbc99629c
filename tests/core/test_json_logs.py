import json
import logging

import pytest

from core.logging import JsonFormatter, log_context

pytestmark = pytest.mark.django_db


def test_json_line_carries_request_and_tenant_ids(api, tenant, caplog):
    lines = []

    class Capture(logging.Handler):
        def emit(self, record):
            lines.append(JsonFormatter().format(record))

    handler = Capture()
    logger = logging.getLogger("atlas.test")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    from rest_framework.views import APIView

    original = APIView.finalize_response

    def finalize(self, request, response, *args, **kwargs):
        logger.info("inside the request")
        return original(self, request, response, *args, **kwargs)

    APIView.finalize_response = finalize
    try:
        response = api.get("/api/keys", HTTP_X_REQUEST_ID="req-123")
    finally:
        APIView.finalize_response = original
        logger.removeHandler(handler)
    assert response["X-Request-ID"] == "req-123"
    record = json.loads(lines[-1])
    assert record["message"] == "inside the request"
    assert record["request_id"] == "req-123"
    assert record["tenant_id"] == str(tenant.id)
    assert log_context.get() is None  # reset after the request
