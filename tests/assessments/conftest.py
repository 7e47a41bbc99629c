"""Browser fixtures for tests/assessments/test_browser.py (imported here so that test
modules do not shadow them), and the visitor's client."""

import pytest
from rest_framework.test import APIClient

from tests.assessments.factories import SESSION_TOKEN
from tests.browser import chromium_browser, chromium_page  # noqa: F401
from tests.conftest import ORIGIN


@pytest.fixture
def browser_api(publishable_key):
    """Tenant 'Acme' with a publishable key from its allowed origin, holding the session token
    of every SessionFactory session by default (a request may send another X-Session-Token:
    a session created through the API has its own)."""
    client = APIClient(HTTP_X_SESSION_TOKEN=SESSION_TOKEN)  # a default: a request may override
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {publishable_key}", HTTP_ORIGIN=ORIGIN)
    return client
