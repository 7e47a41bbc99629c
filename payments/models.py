import uuid

from django.core.validators import RegexValidator
from django.db import models
from django.db.models import F, Q
from django.utils import timezone

from core.models import TenantOwnedModel
from core.validation import EMAIL_REGEX, is_json_object
from tenants.models import Tenant


class PaymentStatus(models.TextChoices):
    PENDING = "pending"
    COMPLETED = "completed"
    FAILED = "failed"
    EXPIRED = "expired"
    REFUNDED = "refunded"
    PARTIALLY_REFUNDED = "partially_refunded"


class FailureReason(models.TextChoices):
    """Why Atlas itself failed a payment (Stripe's own failures leave it blank)."""

    NONE = "", "—"
    AMOUNT_MISMATCH = "amount_mismatch", "Stripe reported another price, amount or currency"


# Stripe price ids (price_…, or a legacy plan id): safe in a URL path, no spaces.
PRICE_ID_REGEX = r"^[A-Za-z0-9_-]{1,255}$"


class PaymentSession(TenantOwnedModel):
    """One Stripe Checkout Session started by Atlas; its status follows payments.transitions."""

    Status = PaymentStatus

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    assessment_session = models.ForeignKey(
        "assessments.AssessmentSession",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        help_text="The assessment this payment unlocks (optional).",
    )
    email = models.CharField(max_length=254)
    first_name = models.CharField(max_length=200)
    form_data = models.JSONField(default=dict, blank=True)
    # price_id, amount and currency are what the session was created for: the completion
    # Stripe reports is checked against them (else the payment fails with amount_mismatch).
    price_id = models.CharField(
        max_length=255, null=True, blank=True, help_text="Stripe Price used (else amount+currency)."
    )
    amount = models.BigIntegerField(
        null=True,
        blank=True,
        help_text="Total in minor units (cents), as Stripe answered when the session was created.",
    )
    currency = models.CharField(max_length=3, help_text="ISO 4217, lower case (Stripe's form).")
    status = models.CharField(
        max_length=20, choices=PaymentStatus.choices, default=PaymentStatus.PENDING
    )
    failure_reason = models.CharField(
        max_length=30,
        choices=FailureReason.choices,
        blank=True,
        default="",
        help_text="Set when Atlas failed the payment itself; such a payment never completes.",
    )
    amount_refunded = models.BigIntegerField(default=0, help_text="Minor units refunded so far.")
    refunds = models.JSONField(
        default=dict,
        blank=True,
        help_text="Refunds seen in webhooks: {refund id: {amount, status}}.",
    )
    stripe_checkout_session_id = models.CharField(max_length=255)
    stripe_payment_intent_id = models.CharField(max_length=255, null=True, blank=True)
    livemode = models.BooleanField(default=False)
    checkout_url = models.TextField(blank=True, default="")
    success_url = models.TextField(blank=True, default="")
    cancel_url = models.TextField(blank=True, default="")
    idempotency_key = models.CharField(
        max_length=255,
        null=True,
        blank=True,
        help_text="Client's Idempotency-Key header; the row id is derived from it.",
    )
    request_fingerprint = models.CharField(
        max_length=64, blank=True, default="", help_text="SHA-256 of the creating request."
    )
    completed_at = models.DateTimeField(null=True, blank=True)
    status_changed_at = models.DateTimeField(null=True, blank=True)
    last_reconciled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        # admin actions: each needs its own permission (see docs/security.md)
        permissions = [
            ("reconcile_paymentsession", "Can reconcile payments with Stripe"),
        ]
        constraints = [
            # webhooks and reconcile find the payment by its Checkout Session id
            models.UniqueConstraint(
                fields=["stripe_checkout_session_id"], name="pay_sess_checkout_session_uniq"
            ),
            models.CheckConstraint(
                name="payment_session_status_valid",
                condition=Q(status__in=PaymentStatus.values),
            ),
            models.CheckConstraint(
                name="payment_session_email_format", condition=Q(email__regex=EMAIL_REGEX)
            ),
            models.CheckConstraint(
                name="payment_session_first_name_not_blank",
                condition=~Q(first_name__regex=r"^\s*$"),
            ),
            models.CheckConstraint(
                name="payment_session_form_data_object", condition=is_json_object("form_data")
            ),
            models.CheckConstraint(
                name="payment_session_refunds_object", condition=is_json_object("refunds")
            ),
            models.CheckConstraint(
                name="payment_session_currency_format", condition=Q(currency__regex=r"^[a-z]{3}$")
            ),
            models.CheckConstraint(
                name="payment_session_amount_non_negative",
                condition=Q(amount__isnull=True) | Q(amount__gte=0),
            ),
            models.CheckConstraint(
                name="payment_session_refund_within_amount",
                condition=Q(amount_refunded__gte=0)
                & (Q(amount__isnull=True) | Q(amount_refunded__lte=F("amount"))),
            ),
            models.CheckConstraint(
                name="payment_session_failure_reason_valid",
                condition=Q(failure_reason__in=FailureReason.values),
            ),
            # a payment Atlas failed (amount_mismatch) stays failed: no later event completes it
            models.CheckConstraint(
                name="payment_session_failure_reason_only_failed",
                condition=Q(failure_reason="") | Q(status="failed"),
            ),
            models.CheckConstraint(
                name="payment_session_completed_at_set",
                condition=Q(status__in=["pending", "failed", "expired"])
                | Q(completed_at__isnull=False),
            ),
        ]
        indexes = [
            # admin search by email
            models.Index(fields=["email"], name="pay_sess_email"),
            # admin filter / dashboard counts by status
            models.Index(fields=["status"], name="pay_sess_status"),
            # refund webhooks find the session by payment intent
            models.Index(fields=["stripe_payment_intent_id"], name="pay_sess_pi"),
            # admin date filter, newest first
            models.Index(fields=["created_at"], name="pay_sess_created"),
            # a tenant's sessions by date
            models.Index(fields=["tenant", "created_at"], name="pay_sess_tenant_created"),
            # payments_reconcile: pending sessions older than a threshold (small partial index)
            models.Index(
                fields=["created_at"],
                name="pay_sess_pending_created",
                condition=Q(status="pending"),
            ),
        ]

    def __str__(self):
        return f"{self.id} ({self.status})"


class AllowedPrice(TenantOwnedModel):
    """A Stripe price id the tenant sells: a checkout for any other priceId is refused
    (price_not_allowed), and a tenant with none cannot start a checkout for a price."""

    price_id = models.CharField(
        max_length=255,
        validators=[
            RegexValidator(
                PRICE_ID_REGEX,
                "A Stripe price id: letters, digits, _ and - only.",
                code="invalid_price_id",
            )
        ],
        help_text="Stripe's price id (price_…), exactly as in the Stripe dashboard.",
    )
    note = models.CharField(
        max_length=200, blank=True, default="", help_text="What it is (e.g. 'Full report 19 EUR')."
    )

    class Meta:
        ordering = ["tenant", "price_id"]
        constraints = [
            # one entry per price and tenant; the checkout's lookup uses it
            models.UniqueConstraint(
                fields=["tenant", "price_id"], name="allowed_price_tenant_uniq"
            ),
            models.CheckConstraint(
                name="allowed_price_id_format", condition=Q(price_id__regex=PRICE_ID_REGEX)
            ),
        ]

    def __str__(self):
        return self.price_id


class StripeEvent(models.Model):
    """Every verified Stripe webhook, stored before it is processed (audit + replay).

    Not tenant-owned at arrival: the tenant is only known once the event is matched to a
    PaymentSession (refund events carry no metadata of ours).
    """

    class Status(models.TextChoices):
        RECEIVED = "received", "Received (not processed yet)"
        PROCESSED = "processed", "Processed"
        IGNORED = "ignored", "Ignored (transition not allowed / not ours)"
        DEFERRED = "deferred", "Deferred (waits for the payment to complete)"
        FAILED = "failed", "Failed (Stripe will retry)"

    # Duplicates are acknowledged without processing when the stored copy is in one of these.
    SETTLED = (Status.PROCESSED, Status.IGNORED, Status.DEFERRED)

    stripe_event_id = models.CharField(max_length=255, unique=True)
    type = models.CharField(max_length=100)
    api_version = models.CharField(max_length=50, blank=True, default="")
    livemode = models.BooleanField(default=False)
    payload = models.JSONField(help_text="The event as Stripe sent it (parsed, for queries).")
    raw_body = models.TextField(
        blank=True, default="", help_text="The exact signed bytes (UTF-8): evidence, re-verifiable."
    )
    event_created_at = models.DateTimeField(help_text="Stripe's `created`: replay order.")
    received_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)
    processed_at = models.DateTimeField(null=True, blank=True)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.RECEIVED)
    result_note = models.TextField(blank=True, default="", help_text="What processing did.")
    processing_error = models.TextField(blank=True, default="")
    attempts = models.PositiveIntegerField(default=0)
    tenant = models.ForeignKey(
        Tenant, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    payment_session = models.ForeignKey(
        PaymentSession, on_delete=models.SET_NULL, null=True, blank=True, related_name="events"
    )
    stripe_object_id = models.CharField(max_length=255, blank=True, default="")
    stripe_payment_intent_id = models.CharField(max_length=255, blank=True, default="")

    class Meta:
        ordering = ["-received_at"]
        # admin actions: each needs its own permission (see docs/security.md)
        permissions = [
            ("reprocess_stripeevent", "Can reprocess Stripe events"),
        ]
        constraints = [
            models.CheckConstraint(
                name="stripe_event_status_valid",
                condition=Q(status__in=["received", "processed", "ignored", "deferred", "failed"]),
            ),
            models.CheckConstraint(
                name="stripe_event_payload_object", condition=is_json_object("payload")
            ),
        ]
        indexes = [
            # admin list, newest first
            models.Index(fields=["received_at"], name="stripe_event_received"),
            # admin filter and payments_reprocess --failed
            models.Index(fields=["status", "type"], name="stripe_event_status_type"),
            # replay of deferred refunds once the payment completes
            models.Index(
                fields=["stripe_payment_intent_id"],
                name="stripe_event_deferred_pi",
                condition=Q(status="deferred"),
            ),
            models.Index(
                fields=["payment_session"],
                name="stripe_event_deferred_session",
                condition=Q(status="deferred"),
            ),
        ]

    def __str__(self):
        return f"{self.stripe_event_id} {self.type} ({self.status})"


class StripeApiFailure(models.Model):
    """A failed call to Stripe's API (checkout creation, reconcile): evidence for the admin."""

    operation = models.CharField(max_length=100)
    error_code = models.CharField(max_length=100, help_text="Our code, as answered to the client.")
    http_status = models.IntegerField(null=True, blank=True, help_text="Stripe's HTTP status.")
    stripe_code = models.CharField(max_length=100, blank=True, default="")
    message = models.TextField(blank=True, default="")
    tenant = models.ForeignKey(
        Tenant, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    payment_session_id = models.UUIDField(
        null=True, blank=True, help_text="Our id (the row may not exist: nothing half-created)."
    )
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            # admin list, newest first
            models.Index(fields=["created_at"], name="stripe_api_failure_created"),
        ]

    def __str__(self):
        return f"{self.operation}: {self.error_code}"


class CircuitBreakerState(models.Model):
    """Shared (cross-process) circuit breaker state for calls to Stripe."""

    name = models.CharField(max_length=100, primary_key=True)
    consecutive_failures = models.PositiveIntegerField(default=0)
    opened_until = models.DateTimeField(
        null=True, blank=True, help_text="Calls are refused until then (open circuit)."
    )
    probe_until = models.DateTimeField(
        null=True, blank=True, help_text="Half-open: one probe call is in flight until then."
    )
    last_failure_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        # admin actions: each needs its own permission (see docs/security.md)
        permissions = [
            ("close_stripe_circuit", "Can close the Stripe circuit breaker"),
        ]

    def __str__(self):
        return self.name


class WebhookRejection(models.Model):
    """Refused webhook calls (bad/stale/missing signature, malformed body), counted per day
    and code: one row per (day, code), so a flood of forged calls cannot grow the table.
    A burst of invalid_signature after a secret rotation shows up here."""

    day = models.DateField()
    code = models.CharField(max_length=50)
    count = models.PositiveIntegerField(default=0)
    first_seen_at = models.DateTimeField(default=timezone.now)
    last_seen_at = models.DateTimeField(default=timezone.now)
    last_detail = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["-day", "code"]
        constraints = [
            # the upsert's conflict target
            models.UniqueConstraint(fields=["day", "code"], name="webhook_rejection_day_code_uniq")
        ]

    def __str__(self):
        return f"{self.day} {self.code} × {self.count}"
