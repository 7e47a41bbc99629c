"""Payments in the operations console: sessions, Stripe events (read-only, reprocess), failed
Stripe calls, the circuit breaker and each tenant's allowed prices. Payments, events, failures
and rejections cannot be deleted: they are evidence."""

from __future__ import annotations

from django.conf import settings
from django.contrib import admin, messages
from django.utils.html import format_html

from core.admin import (
    AppendOnlyAdmin,
    HistoryAdminMixin,
    NoAddMixin,
    ReadOnlyAdmin,
    ReadOnlyInline,
    RecentValuesFilter,
    log_admin_action,
    permission_check,
    pretty_json_field,
    readonly_with_pretty_json,
)
from core.errors import DomainError
from payments.circuit import circuit_record_success
from payments.models import (
    AllowedPrice,
    CircuitBreakerState,
    PaymentSession,
    StripeApiFailure,
    StripeEvent,
    WebhookRejection,
)
from payments.services.reconciliation import payment_session_reconcile, stripe_events_reprocess


def stripe_dashboard_url(ps: PaymentSession) -> str:
    base = settings.STRIPE_DASHBOARD_URL.rstrip("/")
    mode = "" if ps.livemode else "/test"
    if ps.stripe_payment_intent_id:
        return f"{base}{mode}/payments/{ps.stripe_payment_intent_id}"
    # no payment yet: the dashboard search finds the Checkout Session by its id
    return f"{base}{mode}/search?query={ps.stripe_checkout_session_id}"


_INLINE_EVENT_FIELDS = ("stripe_event_id", "type", "status", "result_note", "event_created_at")


class StripeEventInline(ReadOnlyInline):
    model = StripeEvent
    fields = readonly_fields = _INLINE_EVENT_FIELDS
    ordering = ["event_created_at"]


@admin.register(PaymentSession)
class PaymentSessionAdmin(AppendOnlyAdmin):
    """Checkouts are started through the API (Stripe first, then the row); staff reconcile."""

    list_display = [
        "id",
        "tenant",
        "email",
        "status",
        "failure_reason",
        "amount_display",
        "amount_refunded",
        "created_at",
        "stripe_link",
    ]
    list_filter = ["status", "failure_reason", "currency", "created_at", "livemode", "tenant"]
    search_fields = ["=id", "email", "stripe_checkout_session_id", "stripe_payment_intent_id"]
    list_select_related = ["tenant"]
    date_hierarchy = "created_at"
    list_per_page = 50
    show_full_result_count = False
    readonly_fields = [f.name for f in PaymentSession._meta.fields if f.name not in {"tenant"}] + [
        "stripe_link"
    ]
    raw_id_fields = ["tenant", "assessment_session"]
    inlines = [StripeEventInline]
    actions = ["reconcile_with_stripe"]

    has_reconcile_paymentsession_permission = permission_check("reconcile_paymentsession")

    @admin.display(description="amount")
    def amount_display(self, obj):
        if obj.amount is None:
            return "—"
        return f"{obj.amount / 100:.2f} {obj.currency.upper()}"

    @admin.display(description="Stripe")
    def stripe_link(self, obj):
        return format_html(
            '<a href="{}" target="_blank" rel="noopener">open in Stripe</a>',
            stripe_dashboard_url(obj),
        )

    @admin.action(
        description="Reconcile with Stripe (re-read the Checkout Session)",
        permissions=["reconcile_paymentsession"],
    )
    def reconcile_with_stripe(self, request, queryset):
        changed = errors = 0
        sessions = list(queryset)
        for ps in sessions:
            try:
                _status, note = payment_session_reconcile(payment_session=ps)
            except DomainError as exc:
                errors += 1
                self.message_user(request, f"{ps.pk}: {exc.code}", messages.ERROR)
                continue
            changed += note.startswith("applied")
        log_admin_action(
            request,
            sessions,
            action="reconcile_with_stripe",
            selected=len(sessions),
            changed=changed,
            detail=f"{errors} error(s).",
        )
        self.message_user(
            request, f"{changed} session(s) changed, {errors} error(s).", messages.SUCCESS
        )


class StripeEventTypeFilter(RecentValuesFilter):
    title = "type"
    parameter_name = "type"


@admin.register(StripeEvent)
class StripeEventAdmin(HistoryAdminMixin, ReadOnlyAdmin):
    """Newest first by received_at (indexed); exact-match search on unique or indexed ids.
    No date hierarchy: its year list is a DISTINCT over every row."""

    list_display = [
        "stripe_event_id",
        "type",
        "status",
        "payment_session",
        "tenant",
        "attempts",
        "received_at",
        "processed_at",
    ]
    list_filter = ["status", StripeEventTypeFilter, "received_at", "livemode"]
    search_fields = ["=stripe_event_id", "=payment_session__email"]
    list_select_related = ["payment_session", "tenant"]
    list_per_page = 50
    readonly_fields = readonly_with_pretty_json(StripeEvent)
    exclude = ["payload"]  # shown indented by payload_pretty
    payload_pretty = pretty_json_field("payload")
    actions = ["reprocess"]

    has_reprocess_stripeevent_permission = permission_check("reprocess_stripeevent")

    @admin.action(description="Reprocess selected events", permissions=["reprocess_stripeevent"])
    def reprocess(self, request, queryset):
        events = list(queryset)
        ids = [event.stripe_event_id for event in events]
        counts = stripe_events_reprocess(ids=ids)
        level = messages.ERROR if counts["failed"] else messages.SUCCESS
        summary = ", ".join(f"{k}={v}" for k, v in counts.items())
        log_admin_action(
            request,
            events,
            action="reprocess",
            selected=len(events),
            changed=counts["total"],
            detail=f"Result: {summary}.",
        )
        self.message_user(request, f"Reprocessed {counts['total']} event(s): {summary}", level)


@admin.register(StripeApiFailure)
class StripeApiFailureAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "operation", "error_code", "http_status", "tenant", "message"]
    list_filter = ["operation", "error_code", "created_at"]
    search_fields = ["=payment_session_id", "stripe_code", "message"]
    list_select_related = ["tenant"]
    list_per_page = 50
    show_full_result_count = False
    readonly_fields = [f.name for f in StripeApiFailure._meta.fields]


@admin.register(CircuitBreakerState)
class CircuitBreakerStateAdmin(NoAddMixin, admin.ModelAdmin):
    list_display = ["name", "consecutive_failures", "opened_until", "last_failure_at", "last_error"]
    readonly_fields = [f.name for f in CircuitBreakerState._meta.fields]
    actions = ["close_circuit"]

    has_close_stripe_circuit_permission = permission_check("close_stripe_circuit")

    @admin.action(
        description="Close the circuit (let calls through again)",
        permissions=["close_stripe_circuit"],
    )
    def close_circuit(self, request, queryset):
        rows = list(queryset)
        for row in rows:
            circuit_record_success(row.name)
        log_admin_action(
            request, rows, action="close_circuit", selected=len(rows), changed=len(rows)
        )
        self.message_user(request, f"Closed {len(rows)} circuit(s).", messages.SUCCESS)


@admin.register(WebhookRejection)
class WebhookRejectionAdmin(ReadOnlyAdmin):
    list_display = ["day", "code", "count", "first_seen_at", "last_seen_at", "last_detail"]
    list_filter = ["code", "day"]
    readonly_fields = [f.name for f in WebhookRejection._meta.fields]
    list_per_page = 50


@admin.register(AllowedPrice)
class AllowedPriceAdmin(admin.ModelAdmin):
    """The Stripe prices each tenant may sell: a checkout for any other priceId is refused
    (price_not_allowed). Staff add and remove them with the model's own permissions."""

    list_display = ["price_id", "tenant", "note", "created_at"]
    list_filter = ["tenant"]
    search_fields = ["=price_id", "note"]
    list_select_related = ["tenant"]
    raw_id_fields = ["tenant"]
    fields = ["tenant", "price_id", "note", "created_at", "updated_at"]
    readonly_fields = ["created_at", "updated_at"]
    list_per_page = 100
