"""Deactivating a tenant goes through tenants.services.tenant_deactivate (command included)."""

import io

import pytest
from django.core.management import CommandError, call_command

from tenants.models import Tenant
from tests.conftest import client_for
from tests.factories import make_api_key
from tests.tenancy import assert_error

pytestmark = pytest.mark.django_db


def _call(*args) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out, stderr=io.StringIO())
    return out.getvalue().strip()


def test_the_command_deactivates_at_once_and_reactivates(
    tenant, settings, django_capture_on_commit_callbacks
):
    settings.API_KEY_CACHE_TTL_SECONDS = 3600
    api = client_for(make_api_key(tenant, "secret"))
    assert api.get("/api/keys").status_code == 200  # cached for an hour
    with django_capture_on_commit_callbacks(execute=True):
        assert _call("tenants_deactivate", "Acme") == "Acme deactivated"
    assert Tenant.objects.get(pk=tenant.pk).is_active is False
    assert_error(api.get("/api/keys"), 401, "tenant_inactive")
    assert _call("tenants_deactivate", str(tenant.id)) == "Acme was inactive already"
    with django_capture_on_commit_callbacks(execute=True):
        assert _call("tenants_deactivate", "Acme", "--reactivate") == "Acme reactivated"
    assert api.get("/api/keys").status_code == 200


def test_an_unknown_tenant_fails_clearly(db):
    with pytest.raises(CommandError, match="no tenant"):
        _call("tenants_deactivate", "Nobody")


def test_a_tenant_saved_inactive_elsewhere_is_enforced_by_calling_the_service_after(
    tenant, settings, django_capture_on_commit_callbacks
):
    """A model form (the admin's) saves is_active itself: the cache cannot know until the
    service is called; then the keys are refused at once."""
    from tenants.services import tenant_deactivate

    settings.API_KEY_CACHE_TTL_SECONDS = 3600
    api = client_for(make_api_key(tenant, "secret"))
    assert api.get("/api/keys").status_code == 200
    tenant.is_active = False
    tenant.save()
    assert api.get("/api/keys").status_code == 200  # a save alone: still trusted from cache
    with django_capture_on_commit_callbacks(execute=True):
        assert tenant_deactivate(tenant=tenant) is False  # inactive already, still enforced
    assert_error(api.get("/api/keys"), 401, "tenant_inactive")


def test_deactivating_in_the_admin_refuses_the_keys_at_once(
    tenant, settings, admin_client, django_capture_on_commit_callbacks
):
    settings.API_KEY_CACHE_TTL_SECONDS = 3600
    api = client_for(make_api_key(tenant, "secret"))
    assert api.get("/api/keys").status_code == 200  # cached for an hour
    url = f"/admin/tenants/tenant/{tenant.pk}/change/"
    form = {
        "name": tenant.name,
        "api_keys-TOTAL_FORMS": "0",
        "api_keys-INITIAL_FORMS": "0",
        "api_keys-MIN_NUM_FORMS": "0",
        "api_keys-MAX_NUM_FORMS": "1000",
    }  # is_active unticked
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(url, form)
    assert response.status_code == 302, response.content[:2000]
    assert Tenant.objects.get(pk=tenant.pk).is_active is False
    assert_error(api.get("/api/keys"), 401, "tenant_inactive")
    with django_capture_on_commit_callbacks(execute=True):
        admin_client.post(url, {**form, "is_active": "on"})
    assert api.get("/api/keys").status_code == 200
