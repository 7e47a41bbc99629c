"""Starting a checkout: Stripe first, then our row.

Stripe is called outside any transaction, so when it fails no row exists. Our id is chosen
before the call (derived from the client's Idempotency-Key when given) and the
Idempotency-Key sent to Stripe is derived from it, so a retried request gets the same
Checkout Session back from Stripe and the same row back from us.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, cast

from django.db import IntegrityError, transaction

from core.errors import DomainError, ErrorKind
from core.session_proof import SessionProof, session_link_check
from payments.models import PaymentSession
from payments.services.prices import allowed_price_check
from payments.stripe_api import stripe_call, stripe_id
from tenants.scoping import tenant_queryset

if TYPE_CHECKING:
    from stripe.params.checkout import SessionCreateParams

logger = logging.getLogger(__name__)

# uuid5 namespace: a client's Idempotency-Key → our PaymentSession id (per tenant).
_IDEMPOTENCY_NAMESPACE = uuid.UUID("6f1c5a8e-2b7d-4c1e-9a55-0f3e2d1c4b7a")


def stripe_idempotency_key(payment_session_id: uuid.UUID | str) -> str:
    """The Idempotency-Key sent to Stripe: derived from our id, so a retry never makes two."""
    return f"atlas-checkout-{payment_session_id}"


@dataclass(frozen=True)
class CheckoutRequest:
    """What the client asked for: fingerprinted, so a reused Idempotency-Key is caught."""

    email: str
    first_name: str
    success_url: str
    cancel_url: str
    form_data: dict = field(default_factory=dict)
    assessment_session_id: Any = None
    price_id: str | None = None
    amount: int | None = None
    currency: str | None = None
    product_name: str = "Assessment"

    def fingerprint(self) -> str:
        data = {**asdict(self), "assessment_session_id": str(self.assessment_session_id or "")}
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()

    def stripe_params(self, *, payment_session_id: uuid.UUID, tenant_id) -> dict:
        metadata = {
            "payment_session_id": str(payment_session_id),
            "tenant_id": str(tenant_id),
            "assessment_session_id": str(self.assessment_session_id or ""),
        }
        if self.price_id:
            line_item: dict[str, Any] = {"price": self.price_id, "quantity": 1}
        else:
            line_item = {
                "price_data": {
                    "currency": self.currency,
                    "unit_amount": self.amount,
                    "product_data": {"name": self.product_name},
                },
                "quantity": 1,
            }
        return {
            "mode": "payment",
            "client_reference_id": str(payment_session_id),
            "customer_email": self.email,
            "success_url": self.success_url,
            "cancel_url": self.cancel_url,
            "line_items": [line_item],
            "metadata": metadata,
            # copied onto the PaymentIntent, so refund events can name us too
            "payment_intent_data": {"metadata": metadata},
        }


def payment_checkout_create(
    *,
    tenant_id,
    email: str,
    first_name: str,
    success_url: str,
    cancel_url: str,
    form_data: dict | None = None,
    assessment_session_id=None,
    price_id: str | None = None,
    amount: int | None = None,
    currency: str | None = None,
    product_name: str = "Assessment",
    idempotency_key: str | None = None,
    session_proof: SessionProof | None = None,
) -> tuple[PaymentSession, bool]:
    """Create a Stripe Checkout Session, then our row. Returns (row, replayed).

    A publishable key linking the checkout to an assessment session must present that
    session's token (session_proof; None for a secret key): a session id alone (it travels
    in analytics events and URLs) must not let anyone pay into another visitor's session.

    A priceId must be on the tenant's allow-list, whoever asks (a free amount is the
    server's own choice: the view lets only secret keys send one).

    Raises DomainError: price_not_allowed, assessment_session_not_found,
    idempotency_key_reused, or the stripe_* codes of payments.stripe_api (nothing is left
    behind then).
    """
    if price_id is not None:
        # first: a price taken off the list is refused even to a replayed request
        allowed_price_check(tenant_id=tenant_id, price_id=price_id)
    request = CheckoutRequest(
        email=email,
        first_name=first_name,
        success_url=success_url,
        cancel_url=cancel_url,
        form_data=form_data or {},
        assessment_session_id=assessment_session_id,
        price_id=price_id,
        amount=amount,
        currency=currency,
        product_name=product_name,
    )
    fingerprint = request.fingerprint()
    if idempotency_key:
        ps_id = uuid.uuid5(_IDEMPOTENCY_NAMESPACE, f"{tenant_id}:{idempotency_key}")
        existing = tenant_queryset(PaymentSession, tenant_id=tenant_id).filter(pk=ps_id).first()
        if existing is not None:
            return _replay(existing, fingerprint), True
    else:
        ps_id = uuid.uuid4()
    _assessment_session_check(
        tenant_id=tenant_id,
        assessment_session_id=assessment_session_id,
        session_proof=session_proof,
    )
    checkout = _stripe_checkout_create(request, payment_session_id=ps_id, tenant_id=tenant_id)
    row, created = _row_write(
        request,
        checkout,
        payment_session_id=ps_id,
        tenant_id=tenant_id,
        idempotency_key=idempotency_key,
        fingerprint=fingerprint,
    )
    if not created:  # a concurrent request with the same Idempotency-Key won the insert
        return _replay(row, fingerprint), True
    return row, False


def _assessment_session_check(
    *, tenant_id, assessment_session_id, session_proof: SessionProof | None
) -> None:
    """The assessment session must be the tenant's own, and its token presented by a
    publishable key (checked before Stripe is called)."""
    if assessment_session_id is None:
        return
    # Through our foreign key: payments does not import the assessments app.
    assessment_sessions = PaymentSession._meta.get_field("assessment_session").related_model
    session_link_check(
        tenant_queryset(assessment_sessions, tenant_id=tenant_id),
        session_id=assessment_session_id,
        proof=session_proof,
        missing=DomainError(
            "assessment_session_not_found",
            "sessionId does not name an assessment session of this tenant.",
            kind=ErrorKind.NOT_FOUND,
            details={"field": "sessionId"},
        ),
    )


def _stripe_checkout_create(
    request: CheckoutRequest, *, payment_session_id: uuid.UUID, tenant_id
) -> dict:
    """The Checkout Session, through the circuit breaker; raises DomainError on failure."""
    params = cast(
        "SessionCreateParams",
        request.stripe_params(payment_session_id=payment_session_id, tenant_id=tenant_id),
    )
    return stripe_call(
        "checkout.sessions.create",
        lambda client: client.v1.checkout.sessions.create(
            params=params,
            options={"idempotency_key": stripe_idempotency_key(payment_session_id)},
        ),
        tenant_id=tenant_id,
        payment_session_id=payment_session_id,
    ).to_dict()


def _row_write(
    request: CheckoutRequest,
    checkout: dict,
    *,
    payment_session_id: uuid.UUID,
    tenant_id,
    idempotency_key: str | None,
    fingerprint: str,
) -> tuple[PaymentSession, bool]:
    """Insert our row for the Checkout Session (or find the one a concurrent retry wrote)."""
    amount_total = checkout.get("amount_total")
    try:
        with transaction.atomic():
            return PaymentSession.objects.get_or_create(
                pk=payment_session_id,
                defaults={
                    "tenant_id": tenant_id,
                    "assessment_session_id": request.assessment_session_id,
                    "email": request.email,
                    "first_name": request.first_name,
                    "form_data": request.form_data,
                    "price_id": request.price_id,
                    "amount": amount_total if amount_total is not None else request.amount,
                    "currency": (checkout.get("currency") or request.currency or "").lower(),
                    "stripe_checkout_session_id": checkout["id"],
                    "stripe_payment_intent_id": stripe_id(checkout.get("payment_intent")),
                    "livemode": bool(checkout.get("livemode")),
                    "checkout_url": checkout.get("url") or "",
                    "success_url": request.success_url,
                    "cancel_url": request.cancel_url,
                    "idempotency_key": idempotency_key,
                    "request_fingerprint": fingerprint,
                },
            )
    except IntegrityError:
        # A bad row would be our bug (input is validated): leave nothing behind at Stripe either.
        _expire_quietly(checkout["id"])
        raise


def _replay(row: PaymentSession, fingerprint: str) -> PaymentSession:
    if row.request_fingerprint and row.request_fingerprint != fingerprint:
        raise DomainError(
            "idempotency_key_reused",
            "This Idempotency-Key was used for a different checkout request.",
            kind=ErrorKind.UNPROCESSABLE,
        )
    return row


def _expire_quietly(checkout_session_id: str) -> None:
    try:
        stripe_call(
            "checkout.sessions.expire",
            lambda client: client.v1.checkout.sessions.expire(checkout_session_id),
        )
    except DomainError:
        logger.warning("could not expire orphan checkout session %s", checkout_session_id)
