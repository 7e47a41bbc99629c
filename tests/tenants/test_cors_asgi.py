"""CORS on the ASGI server with a cold origins cache: plain HTTP against a real uvicorn (the
browser test drives the same through Chromium)."""

import pytest
import requests
from django.core.cache import cache

from tests.factories import make_api_key
from tests.outbox.sse import asgi_server

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

SITE = "https://shop.example.test"


@pytest.fixture
def realtime():
    with asgi_server() as url:
        yield url


def preflight(url, origin):
    return requests.options(
        f"{url}/api/realtime/stream",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        },
        timeout=5,
    )


def test_preflight_and_origin_requests_with_a_cold_cache(realtime, tenant):
    make_api_key(tenant, "publishable", origins=[SITE])
    for _ in range(2):  # cold, then warm
        cache.clear()
        allowed = preflight(realtime, SITE)
        assert allowed.status_code == 200
        assert allowed.headers["Access-Control-Allow-Origin"] == SITE
        cache.clear()
        refused = preflight(realtime, "https://evil.example.test")
        assert refused.status_code == 200  # corsheaders answers; the browser refuses it
        assert "Access-Control-Allow-Origin" not in refused.headers
        cache.clear()
        simple = requests.get(
            f"{realtime}/api/realtime/stream", headers={"Origin": SITE}, timeout=5
        )
        assert simple.status_code == 401
        assert simple.headers["Access-Control-Allow-Origin"] == SITE


def test_a_deactivated_tenants_origins_no_longer_pass_preflight(realtime, tenant):
    from tenants.services import tenant_deactivate

    make_api_key(tenant, "publishable", origins=[SITE])
    assert "Access-Control-Allow-Origin" in preflight(realtime, SITE).headers
    tenant_deactivate(tenant=tenant)
    assert "Access-Control-Allow-Origin" not in preflight(realtime, SITE).headers
