"""A new API key is shown once, on its own page that no cache keeps, and never travels in the
`messages` cookie (a cookie the browser stores and sends back on every request)."""

from __future__ import annotations

import re

import pytest
from django.contrib.admin.models import ADDITION, LogEntry
from django.contrib.contenttypes.models import ContentType

from tenants.models import ApiKey
from tests.conftest import client_for
from tests.factories import TenantFactory
from tests.hardening.admin_world import cookie_messages, staff_user

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/tenants/tenant/"
FULL_KEY = re.compile(r"(?:sk|pk)_[A-Za-z0-9]{8}_[A-Za-z0-9_-]{20,}")


@pytest.fixture
def key_maker(client):
    user = staff_user("keymaker", "tenants.create_apikey", view_all=True)
    client.force_login(user)
    client.user = user
    return client


def _create(client, tenant, action="create_secret_key"):
    return client.post(
        CHANGELIST, {"action": action, "_selected_action": [str(tenant.pk)], "index": "0"}
    )


def test_new_secret_key_is_shown_once_on_a_no_store_page(key_maker):
    tenant = TenantFactory(name="Keyed")
    response = _create(key_maker, tenant)
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    [raw] = FULL_KEY.findall(response.content.decode())
    assert raw.startswith("sk_")
    assert not FULL_KEY.search(cookie_messages(response))
    # the key works, for this tenant
    assert client_for(raw).get("/api/keys").status_code == 200
    # the next page (where a message would be shown) and the tenant page do not show it
    for url in (CHANGELIST, f"{CHANGELIST}{tenant.pk}/change/"):
        assert raw not in key_maker.get(url).content.decode()


def test_publishable_keys_for_two_tenants_listed_once_each(key_maker):
    tenants = [TenantFactory(name="One"), TenantFactory(name="Two")]
    response = key_maker.post(
        CHANGELIST,
        {
            "action": "create_publishable_key",
            "_selected_action": [str(t.pk) for t in tenants],
            "index": "0",
        },
    )
    page = response.content.decode()
    keys = FULL_KEY.findall(page)
    assert len(keys) == 2 and all(k.startswith("pk_") for k in keys)
    assert "One" in page and "Two" in page
    assert not FULL_KEY.search(cookie_messages(response))


def test_key_creation_is_in_the_admin_history(key_maker):
    tenant = TenantFactory(name="Audited")
    _create(key_maker, tenant)
    key = ApiKey.objects.get(tenant=tenant)
    entry = LogEntry.objects.get(content_type=ContentType.objects.get_for_model(ApiKey))
    assert entry.object_id == str(key.pk) and entry.action_flag == ADDITION
    assert entry.user_id == key_maker.user.pk
    assert key.prefix in entry.change_message and not FULL_KEY.search(entry.change_message)
    tenant_entry = LogEntry.objects.get(content_type=ContentType.objects.get_for_model(tenant))
    assert tenant_entry.object_id == str(tenant.pk) and key.prefix in tenant_entry.change_message
