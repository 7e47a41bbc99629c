import io

import pytest
from django.core.management import CommandError, call_command

from tenants.models import ApiKey, Tenant
from tests.conftest import client_for

pytestmark = pytest.mark.django_db


def _call(*args) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out, stderr=io.StringIO())
    return out.getvalue().strip()


def test_create_tenant_prints_its_id():
    tenant_id = _call("tenants_create", "Initech")
    assert str(Tenant.objects.get(name="Initech").id) == tenant_id


def test_duplicate_tenant_name_fails():
    _call("tenants_create", "Initech")
    with pytest.raises(CommandError):
        _call("tenants_create", "Initech")


def test_apikey_create_by_name_or_id_prints_a_working_key():
    tenant_id = _call("tenants_create", "Initech")
    raw_by_name = _call("tenants_apikey_create", "Initech", "--kind", "secret")
    raw_by_id = _call(
        "tenants_apikey_create", tenant_id, "--kind", "publishable", "--origin", "https://a.test"
    )
    assert raw_by_name.startswith("sk_") and raw_by_id.startswith("pk_")
    assert client_for(raw_by_name).get("/api/keys").status_code == 200
    assert ApiKey.objects.get(prefix=raw_by_id[:11]).allowed_origins == ["https://a.test"]


def test_apikey_list_shows_prefixes_not_keys():
    _call("tenants_create", "Initech")
    raw = _call("tenants_apikey_create", "Initech", "--kind", "secret")
    listing = _call("tenants_apikey_list", "Initech")
    assert raw[:11] in listing and raw not in listing
    assert "1 key(s)" in listing


def test_apikey_revoke_by_prefix_takes_effect_at_once():
    _call("tenants_create", "Initech")
    raw = _call("tenants_apikey_create", "Initech", "--kind", "secret")
    client = client_for(raw)
    assert client.get("/api/keys").status_code == 200  # cached now
    assert _call("tenants_apikey_revoke", raw[:11]) == f"revoked {raw[:11]}"
    assert client.get("/api/keys").status_code == 401


def test_unknown_tenant_and_prefix_fail_clearly():
    with pytest.raises(CommandError, match="no tenant"):
        _call("tenants_apikey_create", "Nope", "--kind", "secret")
    with pytest.raises(CommandError, match="no key"):
        _call("tenants_apikey_revoke", "sk_nothere1")
