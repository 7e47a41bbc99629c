"""Publishable keys: browser endpoints only, and only from the origins they list."""

import pytest
from django.urls import path
from rest_framework.response import Response
from rest_framework.views import APIView

from tenants.permissions import HasAnyKey
from tests.conftest import ORIGIN, client_for
from tests.tenancy import assert_error

pytestmark = [pytest.mark.django_db, pytest.mark.urls("tests.tenants.test_publishable_scope")]


class BrowserView(APIView):
    permission_classes = [HasAnyKey]

    def get(self, request):
        return Response({"tenant": request.tenant_id, "kind": request.auth.kind})

    def post(self, request):
        return Response({"ok": True})


class ServerView(APIView):
    def get(self, request):
        return Response({"ok": True})


urlpatterns = [
    path("api/browser", BrowserView.as_view()),
    path("api/server", ServerView.as_view()),
]


def test_publishable_key_reaches_browser_endpoints(browser_api, tenant):
    response = browser_api.get("/api/browser")
    assert response.status_code == 200
    assert response.json() == {"tenant": str(tenant.id), "kind": "publishable"}


def test_publishable_key_is_refused_on_server_endpoints(browser_api):
    assert_error(browser_api.get("/api/server"), 403, "secret_key_required")


def test_secret_key_reaches_both(api):
    assert api.get("/api/browser").status_code == 200
    assert api.get("/api/server").status_code == 200


def test_publishable_key_from_another_origin_is_403(publishable_key):
    client = client_for(publishable_key, HTTP_ORIGIN="https://evil.example")
    assert_error(client.get("/api/browser"), 403, "origin_not_allowed")


def test_response_carries_cors_header_for_allowed_origin(browser_api):
    response = browser_api.get("/api/browser")
    assert response["Access-Control-Allow-Origin"] == ORIGIN


def test_preflight_allowed_for_listed_origin(anon_api, publishable_key):
    response = anon_api.options(
        "/api/browser",
        HTTP_ORIGIN=ORIGIN,
        HTTP_ACCESS_CONTROL_REQUEST_METHOD="POST",
        HTTP_ACCESS_CONTROL_REQUEST_HEADERS="authorization, content-type",
    )
    assert response.status_code == 200
    assert response["Access-Control-Allow-Origin"] == ORIGIN
    assert "authorization" in response["Access-Control-Allow-Headers"]


def test_preflight_refused_for_unlisted_origin(anon_api, publishable_key):
    response = anon_api.options(
        "/api/browser",
        HTTP_ORIGIN="https://evil.example",
        HTTP_ACCESS_CONTROL_REQUEST_METHOD="POST",
    )
    assert "Access-Control-Allow-Origin" not in response


def test_revoked_key_origins_stop_passing_preflight(anon_api, publishable_key):
    from tenants.models import ApiKey
    from tenants.services import apikey_revoke

    assert apikey_revoke(key=ApiKey.objects.get(prefix=publishable_key[:11]))
    response = anon_api.options(
        "/api/browser", HTTP_ORIGIN=ORIGIN, HTTP_ACCESS_CONTROL_REQUEST_METHOD="POST"
    )
    assert "Access-Control-Allow-Origin" not in response


def test_preflight_allows_the_session_token_header(anon_api, publishable_key):
    response = anon_api.options(
        "/api/browser",
        HTTP_ORIGIN=ORIGIN,
        HTTP_ACCESS_CONTROL_REQUEST_METHOD="POST",
        HTTP_ACCESS_CONTROL_REQUEST_HEADERS="authorization, content-type, x-session-token",
    )
    assert response.status_code == 200
    assert "x-session-token" in response["Access-Control-Allow-Headers"]
