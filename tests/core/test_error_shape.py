"""Every error class answers with the one shape and its own code."""

import pytest
from django.urls import include, path
from rest_framework.views import APIView

from tests.tenancy import assert_error

pytestmark = pytest.mark.django_db


class CrashView(APIView):
    permission_classes = []
    authentication_classes = []

    def get(self, request):
        raise RuntimeError("boom")


urlpatterns = [
    path("api/crash", CrashView.as_view()),
    path("", include("config.urls")),
]


def test_unknown_api_url_is_404_not_found(api):
    assert_error(api.get("/api/no-such-thing"), 404, "not_found")


def test_non_uuid_id_is_404_not_found(api):
    assert_error(api.post("/api/keys/not-a-uuid/revoke"), 404, "not_found")


def test_unknown_id_is_404_not_found(api):
    assert_error(
        api.post("/api/keys/00000000-0000-0000-0000-000000000000/revoke"), 404, "not_found"
    )


def test_wrong_method_is_405(api):
    response = api.put("/api/keys", {}, format="json")
    assert_error(response, 405, "method_not_allowed")


def test_wrong_content_type_is_415(api):
    response = api.generic("POST", "/api/keys", "kind=secret", content_type="text/csv")
    assert_error(response, 415, "unsupported_media_type")


def test_malformed_json_is_400_malformed_json(api):
    response = api.generic("POST", "/api/keys", "{not json", content_type="application/json")
    assert_error(response, 400, "malformed_json")


def test_oversized_body_is_413(api, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    body = '{"kind": "secret", "name": "' + "x" * 2000 + '"}'
    response = api.generic("POST", "/api/keys", body, content_type="application/json")
    assert_error(response, 413, "payload_too_large")


def test_missing_key_is_401(anon_api):
    assert_error(anon_api.get("/api/keys"), 401, "authentication_required")


def test_throttled_is_429_with_retry_after(api, settings):
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {"api_key": "3/min", "anon_ip": "3/min"},
    }
    for _ in range(3):
        assert api.get("/api/keys").status_code == 200
    response = api.get("/api/keys")
    error = assert_error(response, 429, "rate_limited")
    assert int(response["Retry-After"]) > 0
    assert error["details"]["retryAfterSeconds"] > 0


def test_anonymous_ip_is_throttled_too(anon_api, settings):
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {"api_key": "100/min", "anon_ip": "2/min"},
    }
    # anonymous requests are refused (401) but still counted against the IP
    statuses = [anon_api.get("/api/keys").status_code for _ in range(4)]
    assert statuses.count(429) >= 1, statuses


@pytest.mark.urls("tests.core.test_error_shape")
def test_unhandled_exception_is_500_internal_error(client):
    client.raise_request_exception = False
    response = client.get("/api/crash")
    assert_error(response, 500, "internal_error")


@pytest.mark.parametrize("text", ["nul\u0000inside", "lone \ud800 surrogate"])
def test_text_postgres_cannot_store_is_400_unstorable_text(api, text):
    import json

    body = json.dumps({"kind": "secret", "name": text})  # ensure_ascii keeps the escapes
    response = api.generic("POST", "/api/keys", body, content_type="application/json")
    error = assert_error(response, 400, "unstorable_text")
    assert error["details"]["path"] == "$.name"


def test_nested_unstorable_key_is_found(api):
    body = '{"kind": "secret", "allowedOrigins": [], "x": {"a\\u0000": 1}}'
    response = api.generic("POST", "/api/keys", body, content_type="application/json")
    assert_error(response, 400, "unstorable_text")


def test_disallowed_host_is_400_in_the_error_shape(api):
    response = api.get("/api/keys", HTTP_HOST="[)qC")
    assert_error(response, 400, "bad_request")
