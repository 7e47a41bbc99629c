"""Tenant isolation matrix, generated from the URL configuration.

For every API route: no key → 401; a publishable key on a server-only route → 403; for
every route that takes an id, tenant A's secret key on tenant B's object → 404 for every
method the view implements, with B's object unchanged; and for every browser route of one
assessment session, the tenant's own publishable key without (or with a wrong) session token
→ 403 session_token_required / invalid_session_token, nothing changed.
"""

from __future__ import annotations

import json

import pytest
from django.urls import URLPattern, URLResolver, get_resolver
from rest_framework.views import APIView

from tenants.auth import ApiKeyAuthentication
from tenants.permissions import HasAnyKey, HasSecretKey
from tests.hardening.isolation_registry import (
    REGISTRY,
    REQUEST_SHAPES,
    SESSION_SCOPED,
    TOKEN_EXEMPT,
)
from tests.tenancy import assert_error

METHODS = ("get", "head", "post", "put", "patch", "delete")


def _walk(patterns, prefix=""):
    for entry in patterns:
        if isinstance(entry, URLResolver):
            yield from _walk(entry.url_patterns, prefix + str(entry.pattern))
        elif isinstance(entry, URLPattern):
            yield prefix + str(entry.pattern), entry.callback


def api_routes():
    routes = []
    for route, callback in _walk(get_resolver().url_patterns):
        view_class = getattr(callback, "view_class", None) or getattr(callback, "cls", None)
        if not route.startswith("api/") or view_class is None:
            continue
        if not issubclass(view_class, APIView):
            continue
        authenticators = getattr(view_class, "authentication_classes", None)
        if not any(issubclass(a, ApiKeyAuthentication) for a in authenticators or ()):
            continue  # staff/operator or signature-authenticated endpoints (e.g. webhooks)
        methods = [m for m in METHODS if hasattr(view_class, m)]
        routes.append((route, view_class, methods))
    return routes


ROUTES = api_routes()
ID_ROUTES = [r for r in ROUTES if "<" in r[0]]


def _url(route: str, kwargs: dict) -> str:
    import re

    def substitute(match):
        return str(kwargs[match.group(2)])

    return "/" + re.sub(r"<(?:(\w+):)?(\w+)>", substitute, route)


def _placeholder_kwargs(route: str) -> dict:
    import re

    values = {"uuid": "00000000-0000-0000-0000-000000000000", "int": "1"}
    return {
        name: values.get(conv or "str", "x")
        for conv, name in re.findall(r"<(?:(\w+):)?(\w+)>", route)
    }


def test_the_matrix_found_the_api():
    assert len(ROUTES) >= 3 and ID_ROUTES


@pytest.mark.parametrize("route", [r[0] for r in ID_ROUTES])
def test_every_id_route_has_an_isolation_fixture(route):
    assert route in REGISTRY, (
        f"{route} takes an id but has no entry in tests/hardening/isolation_registry.py"
    )


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("route", "view_class", "methods"), ID_ROUTES, ids=[r[0] for r in ID_ROUTES]
)
def test_other_tenants_object_is_404_for_every_method(
    route, view_class, methods, api, other_tenant
):
    if route not in REGISTRY:
        pytest.fail(f"no isolation fixture for {route}")
    url = _url(route, REGISTRY[route](other_tenant))
    shape = REQUEST_SHAPES.get(route, {})
    for method in methods:
        response = api.generic(
            method.upper(),
            url,
            shape.get("body", "{}") if method != "get" else "",
            content_type=shape.get("content_type", "application/json"),
            **shape.get("headers", {}),
        )
        if method == "head":
            assert response.status_code == 404, (route, response.status_code)
        else:
            assert_error(response, 404, "not_found")


@pytest.mark.django_db
@pytest.mark.parametrize(("route", "view_class", "methods"), ROUTES, ids=[r[0] for r in ROUTES])
def test_no_key_is_401(route, view_class, methods, anon_api, settings):
    settings.THROTTLE_ENABLED = False
    url = _url(route, _placeholder_kwargs(route))
    for method in methods:
        response = getattr(anon_api, method)(url, {}, format="json")
        if method == "head":
            assert response.status_code == 401, (route, response.status_code)
            continue
        assert_error(response, 401, "authentication_required")


SERVER_ONLY = [r for r in ROUTES if HasSecretKey in (r[1].permission_classes or [])]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("route", "view_class", "methods"), SERVER_ONLY, ids=[r[0] for r in SERVER_ONLY]
)
def test_publishable_key_is_403_on_server_only_routes(route, view_class, methods, browser_api):
    url = _url(route, _placeholder_kwargs(route))
    for method in methods:
        response = getattr(browser_api, method)(url, {}, format="json")
        if method == "head":
            assert response.status_code == 403, (route, response.status_code)
            continue
        assert_error(response, 403, "secret_key_required")


BROWSER_SESSION_ROUTES = [
    r
    for r in ROUTES
    if r[0].startswith("api/assessments/") and HasAnyKey in (r[1].permission_classes or [])
]


@pytest.mark.parametrize("route", [r[0] for r in BROWSER_SESSION_ROUTES])
def test_every_browser_assessment_route_is_token_checked_or_exempt(route):
    assert route in SESSION_SCOPED or route in TOKEN_EXEMPT, (
        f"{route} is open to publishable keys: add it to SESSION_SCOPED (and check the session "
        "token) or to TOKEN_EXEMPT with the reason, in tests/hardening/isolation_registry.py"
    )


def _session_state(session_id):
    from assessments.models import AssessmentSession, Submission
    from outbox.models import OutboxEvent

    return (
        AssessmentSession.objects.filter(pk=session_id).values().get(),
        Submission.objects.count(),
        OutboxEvent.objects.count(),
    )


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("token", "code"),
    [(None, "session_token_required"), ("not-the-token", "invalid_session_token")],
    ids=["no-token", "wrong-token"],
)
@pytest.mark.parametrize(
    ("route", "view_class", "methods"),
    [r for r in BROWSER_SESSION_ROUTES if r[0] in SESSION_SCOPED],
    ids=[r[0] for r in BROWSER_SESSION_ROUTES if r[0] in SESSION_SCOPED],
)
def test_publishable_key_without_the_session_token_is_refused_and_changes_nothing(
    route, view_class, methods, token, code, tenant, publishable_key
):
    from tests.assessments.factories import SessionFactory
    from tests.conftest import ORIGIN, client_for

    session = SessionFactory(tenant=tenant, status="in_progress", email="owner@example.test")
    shape = SESSION_SCOPED[route]
    url = _url(route, shape["kwargs"](session)) if "kwargs" in shape else "/" + route
    headers = {"HTTP_X_SESSION_TOKEN": token} if token else {}
    client = client_for(publishable_key, HTTP_ORIGIN=ORIGIN, **headers)
    before = _session_state(session.id)
    for method in methods:
        response = client.generic(
            method.upper(),
            url,
            "" if method == "get" else json.dumps(shape["body"](session)),
            content_type="application/json",
        )
        if method == "head":
            assert response.status_code == 403, (route, response.status_code)
            continue
        assert_error(response, 403, code)
        assert b"owner@example.test" not in response.content
    assert _session_state(session.id) == before
