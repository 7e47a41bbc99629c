"""Did Stripe charge what the checkout was created for? Price, amount and currency.

The session stores them when it is created (payments.services.checkout); every completion
Stripe reports (webhook or reconcile) is compared with them before the payment may complete.
"""

from __future__ import annotations

from typing import Any

from payments.models import PaymentSession
from payments.stripe_api import stripe_id

Mismatches = dict[str, dict[str, Any]]  # {"amount": {"expected": 1900, "reported": 100}, …}


def checkout_mismatches(ps: PaymentSession, checkout: dict) -> Mismatches:
    """The fields where Stripe's Checkout Session differs from what `ps` was created for
    (empty: it matches).

    `amount_total` and `currency` are in every Checkout Session Stripe sends, so a missing one
    counts as a mismatch. Line items are only there when expanded (reconcile asks for them;
    webhook events carry none): the price is compared whenever they are reported. Without
    them, the Checkout Session id (matched to our row) and its amount and currency pin it: a
    session's line items cannot change after creation (we enable no adjustable quantity,
    promotion codes or upsells).
    """
    found: Mismatches = {}
    if ps.amount is not None:
        reported_amount = checkout.get("amount_total")
        if not isinstance(reported_amount, int) or reported_amount != ps.amount:
            found["amount"] = {"expected": ps.amount, "reported": reported_amount}
    reported_currency = checkout.get("currency")
    if ps.currency and (
        not isinstance(reported_currency, str) or reported_currency.lower() != ps.currency
    ):
        found["currency"] = {"expected": ps.currency, "reported": reported_currency}
    prices = _line_item_prices(checkout)
    if ps.price_id and prices is not None and prices != [ps.price_id]:
        found["priceId"] = {"expected": ps.price_id, "reported": prices}
    return found


def _line_item_prices(checkout: dict) -> list | None:
    """The price ids of the reported line items; None when Stripe did not include them."""
    line_items = checkout.get("line_items")
    if not isinstance(line_items, dict) or not isinstance(line_items.get("data"), list):
        return None
    prices: list = [
        stripe_id(item.get("price")) if isinstance(item, dict) else None
        for item in line_items["data"]
    ]
    if line_items.get("has_more"):
        prices.append("…")  # more than one page: never what we created (one line item)
    return prices


def mismatch_summary(mismatches: Mismatches) -> str:
    return "; ".join(
        f"{name} expected {v['expected']!r}, Stripe reported {v['reported']!r}"
        for name, v in mismatches.items()
    )
