"""Fixtures shared by every test: tenants, keys and API clients bound to a key."""

from __future__ import annotations

import os

import pytest
from django.core.cache import cache
from rest_framework.test import APIClient

from tenants import rls
from tests.factories import TenantFactory, make_api_key

ORIGIN = "https://app.example.test"


@pytest.fixture(autouse=True)
def _test_cache_dir(settings, tmp_path_factory, worker_id):
    """Each test process gets its own file cache, so clearing it cannot break a neighbour
    (another xdist worker, or another pytest run on the same machine)."""
    location = tmp_path_factory.getbasetemp().parent / f"cache-{worker_id}-{os.getpid()}"
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": str(location),
            "OPTIONS": {"MAX_ENTRIES": 20000},
        }
    }
    os.environ["CACHE_DIR"] = str(location)


@pytest.fixture(autouse=True)
def _fresh_cache(_test_cache_dir):
    # The cache is shared with other processes (file cache under var/): start each test empty,
    # and without request budgets this process took from it (tenants/throttles.py).
    from tenants.throttles import granted

    cache.clear()
    granted.clear()
    yield
    cache.clear()
    granted.clear()


@pytest.fixture(autouse=True)
def _system_scope():
    """Test set-up and assertions read and write every tenant's rows, like an operator; the
    code under test declares its own scope (a request runs with its key's tenant only).
    tests/tenants/test_rls.py takes this scope away to prove the deny-by-default."""
    with rls.system_scope("test set-up and assertions"):
        yield


@pytest.fixture(autouse=True)
def _loopback_targets_allowed(settings, monkeypatch):
    """Receivers in tests listen on 127.0.0.1; production allows no private network. The
    SSRF tests (tests/outbox/test_egress.py) take this allowance away again."""
    settings.OUTBOX_ALLOWED_TARGET_NETWORKS = ["127.0.0.0/8"]
    monkeypatch.setenv("OUTBOX_ALLOWED_TARGET_NETWORKS", "127.0.0.0/8")


@pytest.fixture
def tenant(db):
    return TenantFactory(name="Acme")


@pytest.fixture
def other_tenant(db):
    return TenantFactory(name="Globex")


def client_for(raw_key: str | None, **headers) -> APIClient:
    client = APIClient()
    if raw_key:
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}", **headers)
    elif headers:
        client.credentials(**headers)
    return client


@pytest.fixture
def secret_key(tenant) -> str:
    return make_api_key(tenant, "secret")


@pytest.fixture
def publishable_key(tenant) -> str:
    return make_api_key(tenant, "publishable", origins=[ORIGIN])


@pytest.fixture
def api(secret_key) -> APIClient:
    """Tenant 'Acme' with a secret key."""
    return client_for(secret_key)


@pytest.fixture
def browser_api(publishable_key) -> APIClient:
    """Tenant 'Acme' with a publishable key, calling from its allowed origin."""
    return client_for(publishable_key, HTTP_ORIGIN=ORIGIN)


@pytest.fixture
def other_api(other_tenant) -> APIClient:
    """Tenant 'Globex' with a secret key: must never see Acme's rows."""
    return client_for(make_api_key(other_tenant, "secret"))


@pytest.fixture
def anon_api() -> APIClient:
    return APIClient()
