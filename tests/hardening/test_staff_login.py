"""Staff login: failed logins are throttled per account and per client IP (django-axes), and
the operator API takes the admin session only (HTTP Basic ran a password hash per request,
outside any throttle)."""

from __future__ import annotations

import base64

import pytest
from django.contrib.auth import get_user_model

from tests.tenancy import assert_error

pytestmark = pytest.mark.django_db

LOGIN = "/admin/login/?next=/admin/"
PASSWORD = "right-horse-battery"


@pytest.fixture
def staff(db):
    return get_user_model().objects.create_user("ops", password=PASSWORD, is_staff=True)


def _login(client, username, password, ip, **headers):
    return client.post(
        LOGIN, {"username": username, "password": password}, REMOTE_ADDR=ip, **headers
    )


def _logged_in(client) -> bool:
    return client.get("/admin/").status_code == 200


def test_failed_logins_lock_the_account_from_every_ip(client, staff, settings):
    limit = getattr(settings, "AXES_FAILURE_LIMIT", 5)
    for attempt in range(limit):  # a different IP each time: only the account is counted
        response = _login(client, "ops", "wrong", f"203.0.113.{attempt + 1}")
        # the form again with its error; the failure that reaches the limit is answered 429
        assert response.status_code == (429 if attempt == limit - 1 else 200)
    response = _login(client, "ops", PASSWORD, "198.51.100.7")
    assert response.status_code == 429
    assert not _logged_in(client)


def test_failed_logins_from_one_ip_lock_that_ip_for_every_account(client, staff, settings):
    for attempt in range(getattr(settings, "AXES_FAILURE_LIMIT", 5)):
        _login(client, f"guess{attempt}", "wrong", "203.0.113.50")
    assert _login(client, "ops", PASSWORD, "203.0.113.50").status_code == 429
    assert not _logged_in(client)
    # the account itself is not locked: the same staff member logs in from elsewhere
    assert _login(client, "ops", PASSWORD, "198.51.100.8").status_code == 302
    assert _logged_in(client)


def test_forged_forwarded_for_does_not_escape_the_ip_lock(client, staff, settings):
    settings.TRUSTED_PROXY_COUNT = 0  # no proxy in front: the header is the client's word
    for attempt in range(getattr(settings, "AXES_FAILURE_LIMIT", 5)):
        _login(client, f"spray{attempt}", "wrong", "203.0.113.60",
               HTTP_X_FORWARDED_FOR=f"192.0.2.{attempt}")  # fmt: skip
    response = _login(client, "ops", PASSWORD, "203.0.113.60", HTTP_X_FORWARDED_FOR="192.0.2.99")
    assert response.status_code == 429


def test_a_good_login_below_the_limit_still_works_and_force_login_is_untouched(client, staff):
    assert _login(client, "ops", "wrong", "203.0.113.70").status_code == 200
    assert _login(client, "ops", PASSWORD, "203.0.113.70").status_code == 302
    client.logout()
    client.force_login(staff)  # the test suite's own logins bypass the login form
    assert _logged_in(client)


def _basic(username, password) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


@pytest.fixture
def password_checks(monkeypatch):
    """Counts password hashes: a check against a user's hash, or the dummy hash Django runs
    for an unknown user (both cost the full work factor)."""
    from django.contrib.auth import base_user, hashers

    calls = []

    def counting(original):
        def wrapper(*args, **kwargs):
            calls.append(original.__name__)
            return original(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(base_user, "check_password", counting(hashers.check_password))
    monkeypatch.setattr(base_user, "make_password", counting(hashers.make_password))
    return calls


@pytest.mark.parametrize("password", [PASSWORD, "wrong"])
def test_basic_auth_on_staff_endpoints_is_refused_without_a_password_check(
    client, staff, password_checks, password
):
    response = client.get("/api/auth/cache-stats", HTTP_AUTHORIZATION=_basic("ops", password))
    assert_error(response, 401, "authentication_required")
    assert "Basic" not in response.get("WWW-Authenticate", "")
    assert password_checks == []
    response = client.post("/api/auth/invalidate-cache", HTTP_AUTHORIZATION=_basic("ops", password))
    assert response.status_code == 401 and password_checks == []


def test_staff_session_still_reaches_staff_endpoints(client, staff):
    client.force_login(staff)
    assert client.get("/api/auth/cache-stats").status_code == 200
