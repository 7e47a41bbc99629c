"""The publishable key is shared by every visitor: its budget is per (key, client IP), submits
have their own bucket, and the client IP comes from X-Forwarded-For only through the trusted
proxies (TRUSTED_PROXY_COUNT)."""

from __future__ import annotations

import uuid

import pytest
from django.test import RequestFactory

from tests.assessments.factories import SESSION_TOKEN, SessionFactory
from tests.conftest import ORIGIN, client_for
from tests.processes import run_django_snippet
from tests.tenancy import assert_error

pytestmark = pytest.mark.django_db

EVENTS = "/api/assessments/events"
SUBMIT = "/api/assessments/submit"
VISITOR_A = "198.51.100.1"
VISITOR_B = "198.51.100.2"


@pytest.fixture
def rates(settings):
    def apply(**rates):
        settings.REST_FRAMEWORK = {
            **settings.REST_FRAMEWORK,
            "DEFAULT_THROTTLE_RATES": {
                "api_key": "1000/min",
                "anon_ip": "1000/min",
                "publishable": "1000/min",
                "publishable_submit": "1000/min",
                **rates,
            },
        }

    return apply


def events(client, ip, **extra):
    return client.post(EVENTS, {"events": []}, format="json", REMOTE_ADDR=ip, **extra)


def submit(client, ip):
    """A visitor's submit into its own session (made here, holding its token)."""
    from tenants.models import Tenant

    session = SessionFactory(tenant=Tenant.objects.get(name="Acme"))
    body = {"submissionId": str(uuid.uuid4()), "sessionId": str(session.id), "answers": {}}
    return client.post(
        SUBMIT, body, format="json", REMOTE_ADDR=ip, HTTP_X_SESSION_TOKEN=SESSION_TOKEN
    )


def test_one_visitor_cannot_spend_the_next_visitors_budget(browser_api, rates):
    # Before: the budget was per key, so the second visitor's submit was a 429.
    rates(api_key="5/min", publishable="5/min")
    statuses = [events(browser_api, VISITOR_A).status_code for _ in range(8)]
    assert statuses[:5] == [200] * 5 and statuses[5:] == [429] * 3, statuses
    assert events(browser_api, VISITOR_B).status_code == 200
    assert submit(browser_api, VISITOR_B).status_code == 201


def test_submits_have_their_own_bucket(browser_api, rates):
    rates(publishable="3/min", publishable_submit="2/min")
    assert [events(browser_api, VISITOR_A).status_code for _ in range(4)][-1] == 429
    # the same visitor, its general budget spent, can still submit
    assert [submit(browser_api, VISITOR_A).status_code for _ in range(3)] == [201, 201, 429]
    assert_error(submit(browser_api, VISITOR_A), 429, "rate_limited")
    assert submit(browser_api, VISITOR_B).status_code == 201


def test_secret_keys_keep_one_budget_per_key(api, rates):
    rates(api_key="3/min")
    statuses = [events(api, ip).status_code for ip in (VISITOR_A, VISITOR_B, "203.0.113.9")]
    assert statuses == [200, 200, 200]
    assert events(api, "203.0.113.10").status_code == 429


def test_a_rotating_forwarded_for_no_longer_skips_the_anonymous_limit(anon_api, rates):
    # Before: DRF keyed the anonymous limit on the whole X-Forwarded-For header.
    rates(anon_ip="3/min")
    statuses = [
        anon_api.get(
            "/api/keys", REMOTE_ADDR=VISITOR_A, HTTP_X_FORWARDED_FOR=f"10.9.0.{n}"
        ).status_code
        for n in range(8)
    ]
    assert statuses[:3] == [401] * 3 and set(statuses[3:]) == {429}, statuses


def test_a_rotating_forwarded_for_does_not_split_a_visitors_bucket(browser_api, rates):
    rates(publishable="3/min")
    statuses = [
        events(browser_api, VISITOR_A, HTTP_X_FORWARDED_FOR=f"192.0.2.{n}").status_code
        for n in range(5)
    ]
    assert statuses == [200, 200, 200, 429, 429]


def test_behind_one_trusted_proxy_the_rightmost_forwarded_address_is_the_client(
    publishable_key, rates, settings
):
    settings.TRUSTED_PROXY_COUNT = 1
    rates(publishable="2/min")
    proxy = "10.0.0.5"
    client = client_for(publishable_key, HTTP_ORIGIN=ORIGIN)

    def through_proxy(forwarded):
        return events(client, proxy, HTTP_X_FORWARDED_FOR=forwarded).status_code

    # the client forges a left part; the proxy appends the address it saw
    assert [through_proxy(f"6.6.6.{n}, {VISITOR_A}") for n in range(3)] == [200, 200, 429]
    assert through_proxy(VISITOR_B) == 200


@pytest.mark.parametrize(
    ("count", "remote", "forwarded", "expected"),
    [
        (0, "203.0.113.7", "1.2.3.4", "203.0.113.7"),
        (1, "10.0.0.1", "1.2.3.4", "1.2.3.4"),
        (1, "10.0.0.1", "6.6.6.6, 1.2.3.4", "1.2.3.4"),
        (2, "10.0.0.2", "6.6.6.6, 1.2.3.4, 10.0.0.1", "1.2.3.4"),
        (2, "10.0.0.2", "1.2.3.4", "10.0.0.2"),  # shorter than the proxy chain
        (1, "10.0.0.1", "", "10.0.0.1"),
        (1, "10.0.0.1", "not-an-ip", "10.0.0.1"),
        (1, "10.0.0.1", " 2001:db8::1 ", "2001:db8::1"),
    ],
)
def test_client_ip_takes_the_nth_address_from_the_right(
    settings, count, remote, forwarded, expected
):
    from core.clientip import client_ip

    settings.TRUSTED_PROXY_COUNT = count
    request = RequestFactory().get("/", REMOTE_ADDR=remote, HTTP_X_FORWARDED_FOR=forwarded)
    assert client_ip(request) == expected


@pytest.mark.parametrize("value", ["-1", "two"])
def test_a_bad_trusted_proxy_count_stops_start_up(value):
    result = run_django_snippet("", TRUSTED_PROXY_COUNT=value)
    assert result.returncode != 0
    assert "TRUSTED_PROXY_COUNT" in result.stderr
