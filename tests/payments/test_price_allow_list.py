"""The visitor never chooses the price: a checkout's priceId must be on its tenant's
allow-list (deny by default), managed through the admin and the API with a secret key."""

from __future__ import annotations

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.test import Client

from payments.models import AllowedPrice, PaymentSession
from tests.payments.factories import AllowedPriceFactory
from tests.tenancy import assert_error

pytestmark = pytest.mark.django_db
URL = "/api/payments/checkout"
PRICES = "/api/payments/prices"


def _price_body(price_id: str = "price_assessment", **overrides):
    body = {
        "email": "ada@example.com",
        "firstName": "Ada",
        "priceId": price_id,
        "successUrl": "https://app.example.test/thanks",
        "cancelUrl": "https://app.example.test/cancel",
    }
    body.update(overrides)
    return body


def _amount_body():
    body = _price_body()
    del body["priceId"]
    return {**body, "amount": 1900, "currency": "eur"}


# --- checkout -------------------------------------------------------------------------------


def test_attack_alpha_key_with_betas_cheap_price_is_refused(
    browser_api, tenant, other_tenant, stripe_stub
):
    """Tenant alpha's pk_ (in every visitor's page) and tenant beta's cheap priceId: before
    the allow-list this started a 1.00 EUR checkout that unlocked alpha's paid result."""
    AllowedPriceFactory(tenant=tenant, price_id="price_assessment")
    AllowedPriceFactory(tenant=other_tenant, price_id="price_beta_cheap")
    stripe_stub.prices["price_beta_cheap"] = (100, "eur")
    response = browser_api.post(URL, _price_body("price_beta_cheap"), format="json")
    error = assert_error(response, 400, "price_not_allowed")
    assert error["details"] == {"field": "priceId"}
    assert stripe_stub.calls() == []
    assert PaymentSession.objects.count() == 0


def test_a_tenant_without_allowed_prices_gets_no_checkout_for_a_price(
    browser_api, api, stripe_stub
):
    """Deny by default: no list, no price checkout, whatever the key."""
    for client in (browser_api, api):
        error = assert_error(
            client.post(URL, _price_body(), format="json"), 400, "price_not_allowed"
        )
        assert "no allowed prices" in error["message"]
    assert stripe_stub.calls() == []
    assert PaymentSession.objects.count() == 0


def test_a_secret_key_is_held_to_the_list_too(api, tenant, stripe_stub):
    AllowedPriceFactory(tenant=tenant, price_id="price_assessment")
    stripe_stub.prices["price_other"] = (500, "eur")
    assert_error(api.post(URL, _price_body("price_other"), format="json"), 400, "price_not_allowed")
    assert stripe_stub.calls() == []
    assert api.post(URL, _price_body(), format="json").status_code == 201
    assert PaymentSession.objects.get().price_id == "price_assessment"


def test_a_secret_key_may_still_send_its_own_amount(api, stripe_stub):
    """The server's own choice: an amount checkout with sk_ needs no allow-list."""
    assert AllowedPrice.objects.count() == 0
    response = api.post(URL, _amount_body(), format="json")
    assert response.status_code == 201, response.content
    row = PaymentSession.objects.get()
    assert (row.price_id, row.amount, row.currency) == (None, 1900, "eur")


def test_a_publishable_key_still_cannot_send_an_amount(browser_api, tenant, stripe_stub):
    AllowedPriceFactory(tenant=tenant)
    assert_error(
        browser_api.post(URL, _amount_body(), format="json"), 403, "secret_key_required_for_amount"
    )
    assert stripe_stub.calls() == []
    assert PaymentSession.objects.count() == 0


def test_a_removed_price_is_refused_from_then_on_even_to_a_replay(
    api, browser_api, tenant, stripe_stub
):
    AllowedPriceFactory(tenant=tenant)
    first = browser_api.post(URL, _price_body(), format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    assert first.status_code == 201
    assert api.delete(f"{PRICES}/price_assessment").status_code == 204
    replay = browser_api.post(URL, _price_body(), format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    assert_error(replay, 400, "price_not_allowed")
    assert_error(browser_api.post(URL, _price_body(), format="json"), 400, "price_not_allowed")
    assert len(stripe_stub.calls("POST")) == 1
    # the checkout started while it was allowed is kept
    assert PaymentSession.objects.get().status == "pending"


# --- the API --------------------------------------------------------------------------------


def test_secret_key_lists_adds_and_removes_its_prices(api, tenant, other_tenant):
    AllowedPriceFactory(tenant=other_tenant, price_id="price_globex")
    assert api.get(PRICES).json() == []

    created = api.post(PRICES, {"priceId": "price_1Abc", "note": "Full report"}, format="json")
    assert created.status_code == 201, created.content
    assert created.json()["priceId"] == "price_1Abc"
    assert created.json()["note"] == "Full report"
    row = AllowedPrice.objects.get(tenant=tenant)
    assert (row.price_id, row.note) == ("price_1Abc", "Full report")

    again = api.post(PRICES, {"priceId": "price_1Abc", "note": "changed?"}, format="json")
    assert again.status_code == 200
    assert again.json() == created.json()  # already there: unchanged
    assert AllowedPrice.objects.filter(tenant=tenant).count() == 1

    api.post(PRICES, {"priceId": "price_2Def"}, format="json")
    listed = api.get(PRICES).json()
    assert [p["priceId"] for p in listed] == ["price_1Abc", "price_2Def"]
    assert set(listed[0]) == {"priceId", "note", "createdAt"}

    assert api.delete(f"{PRICES}/price_1Abc").status_code == 204
    assert [p["priceId"] for p in api.get(PRICES).json()] == ["price_2Def"]
    assert_error(api.delete(f"{PRICES}/price_1Abc"), 404, "not_found")
    # the other tenant's list was never touched
    assert list(
        AllowedPrice.objects.filter(tenant=other_tenant).values_list("price_id", flat=True)
    ) == ["price_globex"]


def test_another_tenants_price_cannot_be_removed(api, other_tenant):
    AllowedPriceFactory(tenant=other_tenant, price_id="price_globex")
    assert_error(api.delete(f"{PRICES}/price_globex"), 404, "not_found")
    assert AllowedPrice.objects.filter(tenant=other_tenant, price_id="price_globex").exists()


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"priceId": "price with spaces"}, "invalid_price_id"),
        ({"priceId": "price/../x"}, "invalid_price_id"),
        ({"priceId": ""}, "validation_error"),
        ({"priceId": "p" * 256}, "validation_error"),
        ({"note": "no price"}, "validation_error"),
        ({"priceId": "price_ok", "note": "n" * 201}, "validation_error"),
    ],
)
def test_bad_prices_are_refused_and_nothing_is_stored(api, body, code):
    assert_error(api.post(PRICES, body, format="json"), 400, code)
    assert AllowedPrice.objects.count() == 0


def test_publishable_key_cannot_read_or_change_the_list(browser_api, tenant):
    AllowedPriceFactory(tenant=tenant, price_id="price_assessment")
    assert_error(browser_api.get(PRICES), 403, "secret_key_required")
    assert_error(
        browser_api.post(PRICES, {"priceId": "price_cheap"}, format="json"),
        403,
        "secret_key_required",
    )
    assert_error(browser_api.delete(f"{PRICES}/price_assessment"), 403, "secret_key_required")
    assert list(AllowedPrice.objects.values_list("price_id", flat=True)) == ["price_assessment"]


def test_no_key_is_refused(anon_api):
    assert_error(anon_api.get(PRICES), 401, "authentication_required")
    assert_error(
        anon_api.post(PRICES, {"priceId": "price_x"}, format="json"), 401, "authentication_required"
    )
    assert AllowedPrice.objects.count() == 0


def test_the_endpoints_are_in_the_openapi_schema(client):
    paths = client.get("/api/schema/?format=json").json()["paths"]
    assert {"get", "post"} <= set(paths["/api/payments/prices"])
    delete = paths["/api/payments/prices/{price_id}"]["delete"]
    assert {"204", "403", "404"} <= set(delete["responses"])
    checkout_400 = paths["/api/payments/checkout"]["post"]["responses"]["400"]["description"]
    assert "price_not_allowed" in checkout_400


# --- the database and the admin -------------------------------------------------------------


def test_the_database_keeps_one_row_per_price_and_tenant_and_a_sane_id(tenant, other_tenant):
    AllowedPriceFactory(tenant=tenant, price_id="price_x")
    AllowedPriceFactory(tenant=other_tenant, price_id="price_x")  # another tenant: fine
    with pytest.raises(IntegrityError), transaction.atomic():
        AllowedPrice.objects.create(tenant=tenant, price_id="price_x")
    with pytest.raises(IntegrityError), transaction.atomic():
        AllowedPrice.objects.create(tenant=tenant, price_id="price x")
    assert AllowedPrice.objects.count() == 2


@pytest.fixture
def staff_client():
    user = get_user_model().objects.create_superuser("root", "root@example.com", "pw-123456")
    client = Client()
    client.force_login(user)
    return client


def test_staff_manage_allowed_prices_in_the_admin(staff_client, tenant, other_tenant):
    AllowedPriceFactory(tenant=other_tenant, price_id="price_globex")
    add = staff_client.post(
        "/admin/payments/allowedprice/add/",
        {"tenant": str(tenant.pk), "price_id": "price_acme", "note": "Full report"},
    )
    assert add.status_code == 302, add.content.decode()[:2000]
    row = AllowedPrice.objects.get(tenant=tenant)
    assert (row.price_id, row.note) == ("price_acme", "Full report")
    assert LogEntry.objects.filter(object_id=str(row.pk)).count() == 1

    listed = staff_client.get(
        "/admin/payments/allowedprice/", {"tenant__id__exact": str(tenant.pk)}
    )
    assert listed.status_code == 200
    assert b"price_acme" in listed.content and b"price_globex" not in listed.content

    duplicate = staff_client.post(
        "/admin/payments/allowedprice/add/",
        {"tenant": str(tenant.pk), "price_id": "price_acme"},
    )
    assert duplicate.status_code == 200  # the form again, with the error
    bad = staff_client.post(
        "/admin/payments/allowedprice/add/", {"tenant": str(tenant.pk), "price_id": "a b"}
    )
    assert bad.status_code == 200
    assert AllowedPrice.objects.filter(tenant=tenant).count() == 1

    delete = staff_client.post(f"/admin/payments/allowedprice/{row.pk}/delete/", {"post": "yes"})
    assert delete.status_code == 302
    assert list(AllowedPrice.objects.values_list("price_id", flat=True)) == ["price_globex"]
