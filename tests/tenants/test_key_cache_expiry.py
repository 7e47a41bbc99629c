"""The key cache trusts a verification until an absolute time, and never past a revocation or a
tenant's deactivation, however the cache writes interleave with them."""

import time

import pytest
from django.core.cache import caches
from django.db import connection
from django.test.utils import CaptureQueriesContext

from core.errors import DomainError
from tenants import services
from tenants.keycache import generation_key_for, key_digest
from tenants.models import ApiKey, Tenant
from tests.conftest import client_for
from tests.factories import make_api_key
from tests.tenancy import assert_error

pytestmark = pytest.mark.django_db


@pytest.fixture
def clock(monkeypatch):
    """Moves time.time() (our code and the file cache's expiry) forward by `clock[0]` s."""
    offset = [0.0]
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + offset[0])
    return offset


@pytest.fixture
def long_ttl(settings):
    settings.API_KEY_CACHE_TTL_SECONDS = 300
    settings.API_KEY_LAST_USED_RESOLUTION_SECONDS = 60


def refusal(raw_key: str) -> str | None:
    try:
        services.apikey_authenticate(raw_key=raw_key)
    except DomainError as exc:
        return exc.code
    return None


def key_lookups(raw_key: str) -> int:
    with CaptureQueriesContext(connection) as ctx:
        assert refusal(raw_key) is None
    return len([q for q in ctx.captured_queries if '"key_hash" =' in q["sql"]])


class Interleave:
    """Runs `action` once, just before the first cache write that concerns `digest` (the
    moment a request in flight writes what it verified earlier)."""

    def __init__(self, monkeypatch, digest, action):
        self.backend = type(caches["default"])
        self.original = self.backend.set
        self.fired = False
        interleave = self

        def set_with_interleave(backend, key, *args, **kwargs):
            if not interleave.fired and digest in str(key):
                interleave.fired = True
                action()
            return interleave.original(backend, key, *args, **kwargs)

        monkeypatch.setattr(self.backend, "set", set_with_interleave)

    def done(self):
        self.backend.set = self.original


def test_a_revoke_racing_the_last_used_touch_is_refused_for_good(
    tenant, long_ttl, clock, monkeypatch, django_capture_on_commit_callbacks
):
    raw = make_api_key(tenant, "secret")
    digest = key_digest(raw)
    assert refusal(raw) is None  # verified and cached; last_used_at written
    clock[0] = 61  # the next request is due a last_used_at touch

    def revoke():
        with django_capture_on_commit_callbacks(execute=True):
            assert services.apikey_revoke(key=ApiKey.objects.get(key_hash=digest))

    interleave = Interleave(monkeypatch, digest, revoke)
    refusal(raw)  # the request in flight when the revoke lands (either answer is fine)
    interleave.done()
    if not interleave.fired:
        revoke()
    # from now on refused, also after the TTL and after further touch windows
    for offset in (62, 130, 200, 290, 310, 400, 1000):
        clock[0] = offset
        assert refusal(raw) == "api_key_revoked", offset


def test_a_verification_is_trusted_until_an_absolute_time(tenant, long_ttl, clock):
    """last_used_at touches do not extend the cached verification: after the TTL counted from
    the database lookup, the key is looked up again."""
    raw = make_api_key(tenant, "secret")
    assert key_lookups(raw) == 1
    for offset in (61, 122, 183, 244, 299):
        clock[0] = offset
        assert key_lookups(raw) == 0, offset
    clock[0] = 301
    assert key_lookups(raw) == 1


def test_a_deactivated_tenants_keys_are_refused_at_once(
    tenant, other_tenant, settings, django_capture_on_commit_callbacks
):
    settings.API_KEY_CACHE_TTL_SECONDS = 3600
    secret, public = make_api_key(tenant, "secret"), make_api_key(tenant, "publishable")
    neighbour = make_api_key(other_tenant, "secret")
    for raw in (secret, public, neighbour):
        assert refusal(raw) is None  # cached for an hour
    with django_capture_on_commit_callbacks(execute=True):
        assert services.tenant_deactivate(tenant=tenant) is True
    assert Tenant.objects.get(pk=tenant.pk).is_active is False
    assert refusal(secret) == refusal(public) == "tenant_inactive"
    assert_error(client_for(secret).get("/api/keys"), 401, "tenant_inactive")
    assert refusal(neighbour) is None
    assert services.tenant_deactivate(tenant=tenant) is False  # already
    with django_capture_on_commit_callbacks(execute=True):
        assert services.tenant_activate(tenant=tenant) is True
    assert refusal(secret) is None and refusal(public) is None


def test_a_deactivation_racing_a_first_verification_is_not_cached_over(
    tenant, long_ttl, monkeypatch, django_capture_on_commit_callbacks
):
    """The request read the key row before the deactivation and writes the cache after it."""
    raw = make_api_key(tenant, "secret")

    def deactivate():
        with django_capture_on_commit_callbacks(execute=True):
            services.tenant_deactivate(tenant=Tenant.objects.get(pk=tenant.pk))

    interleave = Interleave(monkeypatch, key_digest(raw), deactivate)
    refusal(raw)
    interleave.done()
    assert interleave.fired
    assert refusal(raw) == "tenant_inactive"


def test_a_revoked_key_is_refused_even_when_the_cache_lost_the_generation(
    tenant, long_ttl, django_capture_on_commit_callbacks
):
    """An evicted generation entry (file cache culling, Redis eviction) fails closed: the
    cached verification no longer matches and the row decides."""
    raw = make_api_key(tenant, "secret")
    assert refusal(raw) is None
    ApiKey.objects.filter(key_hash=key_digest(raw)).update(revoked_at="2024-01-01T00:00Z")
    caches["default"].delete(generation_key_for(key_digest(raw)))  # evicted
    assert refusal(raw) == "api_key_revoked"
