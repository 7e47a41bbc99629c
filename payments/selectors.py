"""Payment reads. Tenant-owned lookups go through tenants.scoping; the few lookups by a
Stripe id are global by nature (Stripe ids are unique across accounts) and are used only by
the webhook and reconcile paths, which have no tenant until the row is found."""

from __future__ import annotations

import uuid
from datetime import timedelta

from django.db.models import Q, QuerySet
from django.utils import timezone

from core.errors import DomainError, ErrorKind
from payments.models import AllowedPrice, PaymentSession, PaymentStatus, StripeEvent
from tenants.scoping import tenant_get_or_404, tenant_queryset


def payment_session_get(*, tenant_id, payment_session_id) -> PaymentSession:
    """not_found for a malformed id too: ids of other tenants never leak."""
    pk = _as_uuid(payment_session_id)
    if pk is None:
        raise DomainError("not_found", "No such object.", kind=ErrorKind.NOT_FOUND)
    return tenant_get_or_404(PaymentSession, tenant_id=tenant_id, pk=pk)


def allowed_prices_list(*, tenant_id) -> QuerySet:
    """The tenant's price allow-list, oldest first."""
    return tenant_queryset(AllowedPrice, tenant_id=tenant_id).order_by("created_at", "id")


def _as_uuid(value) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value))
    except (TypeError, ValueError, AttributeError):
        return None


def payment_session_for_checkout(
    *, checkout_object: dict, lock: bool = False
) -> PaymentSession | None:
    """The PaymentSession a Checkout Session belongs to: our id (client_reference_id) within
    the tenant named in its metadata, else the Checkout Session id. Both must agree.
    `lock`: SELECT … FOR UPDATE (the webhook applies events of one payment one at a time)."""
    rows = PaymentSession.objects.select_for_update() if lock else PaymentSession.objects
    stripe_id = checkout_object.get("id") or ""
    metadata = checkout_object.get("metadata") or {}
    ours = _as_uuid(
        checkout_object.get("client_reference_id") or metadata.get("payment_session_id")
    )
    tenant_id = _as_uuid(metadata.get("tenant_id"))
    found = None
    if ours and tenant_id:
        found = tenant_queryset(rows.all(), tenant_id=tenant_id).filter(pk=ours).first()
    if found is None and stripe_id:
        found = rows.filter(stripe_checkout_session_id=stripe_id).first()
    if found is not None and found.stripe_checkout_session_id != stripe_id:
        return None  # a forged or foreign reference: never act on it
    return found


def payment_session_for_payment_intent(
    *, payment_intent_id: str, metadata: dict | None = None, lock: bool = False
) -> PaymentSession | None:
    metadata = metadata or {}
    rows = PaymentSession.objects.select_for_update() if lock else PaymentSession.objects
    ours = _as_uuid(metadata.get("payment_session_id"))
    tenant_id = _as_uuid(metadata.get("tenant_id"))
    if ours and tenant_id:
        found = tenant_queryset(rows.all(), tenant_id=tenant_id).filter(pk=ours).first()
        if found is not None and found.stripe_payment_intent_id in (None, "", payment_intent_id):
            return found
    if not payment_intent_id:
        return None
    return rows.filter(stripe_payment_intent_id=payment_intent_id).first()


def payment_sessions_due_for_reconcile(*, older_than_minutes: int, limit: int) -> QuerySet:
    """Pending sessions older than the threshold, oldest first (partial index on pending)."""
    cutoff = timezone.now() - timedelta(minutes=older_than_minutes)
    return PaymentSession.objects.filter(
        status=PaymentStatus.PENDING, created_at__lt=cutoff
    ).order_by("created_at")[:limit]


def stripe_events_deferred_for(*, payment_session: PaymentSession) -> QuerySet:
    match = Q(payment_session_id=payment_session.pk)
    if payment_session.stripe_payment_intent_id:
        match |= Q(stripe_payment_intent_id=payment_session.stripe_payment_intent_id)
    return StripeEvent.objects.filter(match, status=StripeEvent.Status.DEFERRED).order_by(
        "event_created_at", "id"
    )


def stripe_events_for_reprocess(
    *, ids: list[str] | None = None, failed_only: bool = False, types: list[str] | None = None
) -> QuerySet:
    events = StripeEvent.objects.all()
    if ids:
        events = events.filter(stripe_event_id__in=ids)
    if failed_only:
        events = events.filter(status__in=[StripeEvent.Status.FAILED, StripeEvent.Status.RECEIVED])
    if types:
        events = events.filter(type__in=types)
    return events.order_by("event_created_at", "id")
