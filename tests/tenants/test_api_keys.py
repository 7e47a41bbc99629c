import hashlib

import pytest
from django.core.cache import cache
from django.db import connection
from django.test.utils import CaptureQueriesContext

from tenants.models import ApiKey
from tests.conftest import client_for
from tests.factories import make_api_key
from tests.tenancy import assert_error, assert_tenant_isolated

pytestmark = pytest.mark.django_db


def test_key_is_stored_hashed_and_shown_once(tenant):
    raw = make_api_key(tenant, "secret")
    key = ApiKey.objects.get()
    assert raw.startswith("sk_") and raw.startswith(key.prefix + "_")
    assert key.key_hash == hashlib.sha256(raw.encode()).hexdigest()
    assert raw not in {key.key_hash, key.prefix, key.name}
    # no column holds the full key
    assert not ApiKey.objects.filter(prefix=raw).exists()


def test_publishable_keys_have_pk_prefix(tenant):
    assert make_api_key(tenant, "publishable").startswith("pk_")


def test_valid_secret_key_lists_own_keys(api, tenant):
    response = api.get("/api/keys")
    assert response.status_code == 200
    assert [k["prefix"] for k in response.json()] == list(
        ApiKey.objects.filter(tenant=tenant).values_list("prefix", flat=True)
    )


def test_missing_key_is_401_authentication_required(anon_api):
    response = anon_api.get("/api/keys")
    assert_error(response, 401, "authentication_required")
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_unknown_key_is_401_invalid_api_key(tenant):
    response = client_for("sk_deadbeef_" + "x" * 43).get("/api/keys")
    assert_error(response, 401, "invalid_api_key")


def test_malformed_authorization_header(tenant, secret_key):
    client = client_for(None, HTTP_AUTHORIZATION=f"Token {secret_key}")
    assert_error(client.get("/api/keys"), 401, "malformed_authorization_header")


def test_revoked_key_is_401_api_key_revoked(api, secret_key):
    assert api.get("/api/keys").status_code == 200  # now cached
    key = ApiKey.objects.get(prefix=secret_key[:11])
    response = api.post(f"/api/keys/{key.id}/revoke")
    assert response.status_code == 200 and response.json()["revokedAt"]
    assert_error(api.get("/api/keys"), 401, "api_key_revoked")


def test_rotation_new_key_works_at_once_and_old_until_revoked(api, secret_key):
    created = api.post("/api/keys", {"kind": "secret", "name": "rotated"}, format="json")
    assert created.status_code == 201
    new_raw = created.json()["key"]
    new_client = client_for(new_raw)
    assert new_client.get("/api/keys").status_code == 200
    assert api.get("/api/keys").status_code == 200  # the old key still works

    old = ApiKey.objects.get(prefix=secret_key[:11])
    assert new_client.post(f"/api/keys/{old.id}/revoke").status_code == 200
    assert_error(api.get("/api/keys"), 401, "api_key_revoked")
    assert new_client.get("/api/keys").status_code == 200
    # the full key is not retrievable again
    listed = new_client.get("/api/keys").json()
    assert all("key" not in item for item in listed)


def test_cache_turns_a_burst_into_one_lookup(api):
    with CaptureQueriesContext(connection) as first:
        assert api.get("/api/keys").status_code == 200
    with CaptureQueriesContext(connection) as later:
        for _ in range(10):
            assert api.get("/api/keys").status_code == 200
    auth_queries = [q for q in first.captured_queries if '"key_hash" =' in q["sql"]]
    assert len(auth_queries) == 1
    assert not [q for q in later.captured_queries if '"key_hash" =' in q["sql"]]
    # only the view's own list query remains per request
    assert len(later.captured_queries) == 10


def test_recently_used_key_is_cached_after_a_miss(api, secret_key):
    assert api.get("/api/keys").status_code == 200  # sets last_used_at
    cache.clear()  # e.g. after a restart of the cache: last_used_at is recent in the row
    with CaptureQueriesContext(connection) as ctx:
        for _ in range(3):
            assert api.get("/api/keys").status_code == 200
    assert len([q for q in ctx.captured_queries if '"key_hash" =' in q["sql"]]) == 1


def test_cache_off_costs_one_lookup_per_request(api, settings):
    settings.API_KEY_CACHE_ENABLED = False
    with CaptureQueriesContext(connection) as ctx:
        for _ in range(5):
            assert api.get("/api/keys").status_code == 200
    assert len([q for q in ctx.captured_queries if '"key_hash" =' in q["sql"]]) == 5


def test_last_used_at_is_written_once_per_window(api, secret_key):
    api.get("/api/keys")
    key = ApiKey.objects.get(prefix=secret_key[:11])
    first = key.last_used_at
    assert first is not None
    with CaptureQueriesContext(connection) as ctx:
        api.get("/api/keys")
    assert not [q for q in ctx.captured_queries if q["sql"].startswith("UPDATE")]
    key.refresh_from_db()
    assert key.last_used_at == first


def test_another_tenant_cannot_revoke_my_key(api, other_api, secret_key):
    key = ApiKey.objects.get(prefix=secret_key[:11])
    assert_tenant_isolated(
        other_api,
        "post",
        f"/api/keys/{key.id}/revoke",
        unchanged=lambda: ApiKey.objects.get(pk=key.pk).revoked_at,
    )
    assert api.get("/api/keys").status_code == 200


def test_another_tenant_never_lists_my_keys(api, other_api, tenant):
    prefixes = {k["prefix"] for k in other_api.get("/api/keys").json()}
    mine = set(ApiKey.objects.filter(tenant=tenant).values_list("prefix", flat=True))
    assert prefixes and not prefixes & mine


def test_invalid_origin_on_key_creation_is_400(api):
    response = api.post(
        "/api/keys",
        {"kind": "publishable", "allowedOrigins": ["https://ok.test/path"]},
        format="json",
    )
    assert_error(response, 400, "invalid_origin")
    assert ApiKey.objects.count() == 1


def test_unknown_kind_is_400_with_field_details(api):
    response = api.post("/api/keys", {"kind": "root"}, format="json")
    error = assert_error(response, 400, "validation_error")
    assert error["details"]["fields"]["kind"][0]["code"] == "invalid_choice"
