"""The tenant's price allow-list: which Stripe prices a checkout may be started for.

The visitor never chooses the price: a checkout's priceId must be on its tenant's list, and a
tenant with an empty list cannot start a checkout for any price (deny by default).
"""

from __future__ import annotations

from django.db import transaction

from core.errors import DomainError, ErrorKind
from payments.models import AllowedPrice
from tenants.scoping import tenant_get_or_404, tenant_queryset


def allowed_price_check(*, tenant_id, price_id: str) -> None:
    """Raise price_not_allowed unless `price_id` is on the tenant's allow-list."""
    prices = tenant_queryset(AllowedPrice, tenant_id=tenant_id)
    if prices.filter(price_id=price_id).exists():
        return
    raise DomainError(
        "price_not_allowed",
        "priceId is not one of this tenant's allowed prices."
        if prices.exists()
        else "This tenant has no allowed prices: add one (secret key or admin) before checkout.",
        kind=ErrorKind.INVALID,
        details={"field": "priceId"},
    )


def allowed_price_add(*, tenant_id, price_id: str, note: str = "") -> tuple[AllowedPrice, bool]:
    """Put a price on the list. Returns (row, created); a price already there is unchanged."""
    with transaction.atomic():
        return AllowedPrice.objects.get_or_create(
            tenant_id=tenant_id, price_id=price_id, defaults={"note": note}
        )


def allowed_price_remove(*, tenant_id, price_id: str) -> None:
    """Take a price off the list (not_found when it is not there). Checkouts already started
    for it are not touched; new ones are refused."""
    row = tenant_get_or_404(AllowedPrice, tenant_id=tenant_id, price_id=price_id)
    row.delete()
