import uuid

from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.db.models import Func, Q, Value

from core.models import TenantOwnedModel
from core.validation import is_json_object
from tenants.models import Tenant

# A dedicated sequence numbers events in insert order: the realtime stream's resume cursor.
EVENT_SEQ_NAME = "outbox_event_seq"


def all_event_types() -> list[str]:
    """A target's default subscription: every business event (targets made before
    subscriptions existed keep receiving everything they did)."""
    return ["*"]


class OutboxEvent(TenantOwnedModel):
    """A business fact written in the same transaction as the data it describes.

    One row per publish. Delivery state per target is tracked by `Delivery` rows.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # no single-column tenant index: the three (tenant, …) indexes below lead with it, and
    # every index is paid for by each publish
    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="+", db_index=False)
    topic = models.CharField(max_length=100, help_text="e.g. assessments, payments, uploads")
    event_type = models.CharField(max_length=100, help_text="e.g. assessment.submitted")
    payload = models.JSONField(default=dict)
    idempotency_key = models.CharField(
        max_length=255, help_text="Stable key receivers dedupe on; unique per tenant."
    )
    ordering_key = models.CharField(max_length=255, null=True, blank=True)
    occurred_at = models.DateTimeField()
    seq = models.BigIntegerField(
        unique=True,
        editable=False,
        db_default=Func(Value(EVENT_SEQ_NAME), function="nextval"),
        help_text="Insert order (realtime stream cursor, Last-Event-ID).",
    )

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "idempotency_key"], name="outbox_event_tenant_idem_key_uniq"
            ),
            models.CheckConstraint(
                name="outbox_event_payload_object", condition=is_json_object("payload")
            ),
            models.CheckConstraint(name="outbox_event_type_not_blank", condition=~Q(event_type="")),
        ]
        indexes = [
            # admin and realtime replay: a tenant's events in time order
            models.Index(fields=["tenant", "created_at"], name="outbox_event_tenant_created"),
            # realtime replay after Last-Event-ID: a tenant's events by seq
            models.Index(fields=["tenant", "seq"], name="outbox_event_tenant_seq"),
        ]

    def __str__(self):
        return f"{self.event_type} {self.id}"


class Target(TenantOwnedModel):
    """Where a tenant's events go: a signed webhook (n8n…), a Slack webhook, or realtime."""

    class Kind(models.TextChoices):
        WEBHOOK = "webhook", "Webhook (signed)"
        SLACK = "slack", "Slack incoming webhook"
        REALTIME = "realtime", "Realtime (SSE)"

    class Circuit(models.TextChoices):
        CLOSED = "closed", "Closed"
        OPEN = "open", "Open"
        HALF_OPEN = "half_open", "Half-open"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.SlugField(max_length=64, help_text="Unique per tenant; the API's `target`.")
    kind = models.CharField(max_length=20, choices=Kind.choices)
    url = models.URLField(max_length=2000, blank=True)
    secret = models.CharField(max_length=100, help_text="Signing secret (whsec_…).")
    previous_secret = models.CharField(max_length=100, blank=True)
    previous_secret_expires_at = models.DateTimeField(
        null=True, blank=True, help_text="The old secret signs alongside the new one until then."
    )
    is_enabled = models.BooleanField(
        default=True, help_text="Disabled: new events are not routed to this target."
    )
    paused_at = models.DateTimeField(
        null=True, blank=True, help_text="Paused: deliveries wait (e.g. after a 410 Gone)."
    )
    paused_reason = models.CharField(max_length=255, blank=True)
    timeout_seconds = models.FloatField(default=10.0)
    max_attempts = models.PositiveIntegerField(null=True, blank=True, help_text="Empty: default.")
    backoff_base_seconds = models.PositiveIntegerField(null=True, blank=True)
    backoff_max_seconds = models.PositiveIntegerField(null=True, blank=True)
    rate_limit_per_second = models.FloatField(
        null=True, blank=True, help_text="Sends per second, all workers together; empty = no limit."
    )
    rate_next_at = models.DateTimeField(
        null=True, blank=True, editable=False, help_text="Rate limit: the next free send slot."
    )
    circuit_state = models.CharField(max_length=20, choices=Circuit.choices, default=Circuit.CLOSED)
    circuit_failures = models.PositiveIntegerField(default=0, help_text="Consecutive failures.")
    circuit_successes = models.PositiveIntegerField(default=0, help_text="Successes half-open.")
    circuit_opened_at = models.DateTimeField(null=True, blank=True)
    circuit_probe_until = models.DateTimeField(
        null=True, blank=True, help_text="Half-open: the one probe in flight holds this lease."
    )
    # routing (docs/outbox-routing.md): matched inside the publish statement
    event_types = ArrayField(
        models.CharField(max_length=100),
        default=all_event_types,
        help_text="Event type patterns this target receives: assessment.submitted, payment.*, *.",
    )
    payload_filter = models.JSONField(
        null=True,
        blank=True,
        help_text="Optional: only events whose payload has these top-level values, "
        'e.g. {"topic": "payments"}.',
    )
    permanent_statuses = ArrayField(
        models.PositiveSmallIntegerField(),
        default=list,
        blank=True,
        help_text="HTTP statuses that dead-letter at once; every other non-2xx is retried "
        "(410 always pauses the target).",
    )
    dead_notice_at = models.DateTimeField(
        null=True, blank=True, editable=False, help_text="When the last delivery.dead went out."
    )

    class Meta:
        ordering = ["name"]
        # admin actions: each needs its own permission (see docs/security.md)
        permissions = [
            ("pause_target", "Can pause and resume delivery to a target"),
            ("reset_target_circuit", "Can reset a target's circuit breaker"),
            ("send_target_test", "Can send a test event to a target"),
            ("replay_target", "Can replay a target's deliveries"),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "name"], name="outbox_target_tenant_name_uniq"
            ),
            models.CheckConstraint(
                name="outbox_target_url_required",
                condition=Q(kind="realtime") | ~Q(url=""),
            ),
        ]

    def __str__(self):
        return f"{self.name} ({self.kind})"


class Delivery(TenantOwnedModel):
    """One event on its way to one target: the retry state lives here, in our rows."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        RETRYING = "retrying", "Retrying"
        DELIVERED = "delivered", "Delivered"
        DEAD = "dead", "Dead"
        CANCELLED = "cancelled", "Cancelled"

    OPEN_STATUSES = (Status.PENDING, Status.RETRYING)

    # no single-column FK indexes: (event, target) and (target, status, …) lead with them,
    # and every index is paid for by each publish
    event = models.ForeignKey(
        OutboxEvent, on_delete=models.CASCADE, related_name="deliveries", db_index=False
    )
    target = models.ForeignKey(
        Target, on_delete=models.PROTECT, related_name="deliveries", db_index=False
    )
    ordering_key = models.CharField(max_length=255, null=True, blank=True)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField()
    locked_until = models.DateTimeField(null=True, blank=True)
    locked_by = models.CharField(max_length=100, blank=True)
    last_error = models.TextField(blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        # admin actions: each needs its own permission (see docs/security.md)
        permissions = [
            ("requeue_delivery", "Can requeue deliveries"),
            ("cancel_delivery", "Can cancel deliveries"),
        ]
        verbose_name_plural = "deliveries"
        constraints = [
            models.UniqueConstraint(
                fields=["event", "target"], name="outbox_delivery_event_target"
            ),
        ]
        indexes = [
            # the worker's claim: each target's open deliveries by due time (id breaks ties:
            # LIMIT reads only the head of each target's range, never the whole backlog)
            models.Index(
                fields=["target", "next_attempt_at", "id"],
                name="outbox_delivery_target_due",
                condition=Q(status__in=["pending", "retrying"]),
            ),
            # ordering check: an earlier open delivery of the same target and key
            models.Index(
                fields=["target", "ordering_key", "id"],
                name="outbox_delivery_ordering",
                condition=Q(status__in=["pending", "retrying"], ordering_key__isnull=False),
            ),
            # stats and admin: a target's deliveries by status
            models.Index(fields=["target", "status", "created_at"], name="outbox_delivery_tgt_st"),
            # dashboard, /metrics, admin: the unsettled set (open and dead) counted index-only
            # per target (or whole, per tenant), whatever the delivered history's size
            models.Index(
                fields=["target", "status", "created_at", "updated_at", "tenant"],
                name="outbox_delivery_unsettled",
                condition=Q(status__in=["pending", "retrying", "dead"]),
            ),
        ]

    def __str__(self):
        return f"{self.event_id} → {self.target_id} ({self.status})"


class DeliveryAttempt(TenantOwnedModel):
    """One HTTP try (or broadcast): read-only evidence shown in the admin."""

    class Outcome(models.TextChoices):
        DELIVERED = "delivered", "Delivered"
        RETRY = "retry", "Retryable failure"
        PERMANENT = "permanent", "Permanent failure"

    delivery = models.ForeignKey(  # (delivery, number) below serves the FK lookups
        Delivery, on_delete=models.CASCADE, related_name="attempt_rows", db_index=False
    )
    number = models.PositiveIntegerField()
    outcome = models.CharField(max_length=20, choices=Outcome.choices)
    status_code = models.PositiveIntegerField(null=True, blank=True)
    duration_ms = models.FloatField()
    response_excerpt = models.TextField(blank=True, help_text="First 2 KB of the response.")
    error = models.TextField(blank=True)
    worker = models.CharField(max_length=100, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["delivery", "number"], name="outbox_attempt_delivery")]

    def __str__(self):
        return f"attempt {self.number} {self.outcome}"


# Upper bounds (seconds) of the histograms kept per minute in DeliveryStat: HTTP call
# durations are milliseconds to seconds; publish-to-delivered latency up to hours.
ATTEMPT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
LATENCY_BUCKETS = (0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 6 * 3600, 24 * 3600)


class DeliveryStat(TenantOwnedModel):
    """What the worker did for one target in one minute, added to by the statement that
    records the verdicts (outbox/delivery/record.py): the dashboard, /metrics and the target
    list read these few rows instead of counting the attempt and delivery history.

    Histograms are cumulative counts per bucket of ATTEMPT_BUCKETS / LATENCY_BUCKETS with
    +Inf last (so rows add up element by element)."""

    id = models.BigAutoField(primary_key=True)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+", db_index=False)
    target = models.ForeignKey(Target, on_delete=models.CASCADE, related_name="+", db_index=False)
    minute = models.DateTimeField(help_text="Start of the minute (UTC) the verdicts fell in.")
    attempts = models.PositiveIntegerField(default=0)
    attempts_delivered = models.PositiveIntegerField(default=0)
    attempts_retry = models.PositiveIntegerField(default=0)
    attempts_permanent = models.PositiveIntegerField(default=0)
    delivered = models.PositiveIntegerField(default=0, help_text="Deliveries now delivered.")
    dead = models.PositiveIntegerField(default=0, help_text="Deliveries that became dead.")
    duration_ms_sum = models.FloatField(default=0.0)
    duration_le = ArrayField(models.BigIntegerField(), help_text="Attempt durations, cumulative.")
    latency_seconds_sum = models.FloatField(default=0.0)
    latency_le = ArrayField(models.BigIntegerField(), help_text="Publish-to-delivered, cumulative.")

    class Meta:
        ordering = ["-minute"]
        constraints = [
            # the record statement's upsert target
            models.UniqueConstraint(fields=["target", "minute"], name="outbox_stat_target_minute"),
        ]
        indexes = [
            # /metrics window over every target; the stats prune
            models.Index(fields=["minute"], name="outbox_stat_minute"),
            # the dashboard's tenant filter
            models.Index(fields=["tenant", "minute"], name="outbox_stat_tenant_minute"),
        ]

    def __str__(self):
        return f"{self.target_id} {self.minute:%Y-%m-%d %H:%M}"


class CircuitTransition(TenantOwnedModel):
    """Every circuit-breaker state change of a target (logged and shown in the admin)."""

    target = models.ForeignKey(Target, on_delete=models.CASCADE, related_name="transitions")
    from_state = models.CharField(max_length=20)
    to_state = models.CharField(max_length=20)
    reason = models.CharField(max_length=255, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return f"{self.from_state} → {self.to_state}"


class ReplayRequest(TenantOwnedModel):
    """One replay of a target's deliveries (API, admin or command): the audit trail, and the
    answer a repeated Idempotency-Key gets back without requeueing again."""

    target = models.ForeignKey(Target, on_delete=models.CASCADE, related_name="replays")
    idempotency_key = models.CharField(max_length=255, null=True, blank=True)
    fingerprint = models.CharField(max_length=64, help_text="SHA-256 of the request's window.")
    since = models.DateTimeField()
    until = models.DateTimeField()
    status = models.CharField(max_length=20, blank=True, help_text="Empty: every closed status.")
    requeued = models.PositiveIntegerField(default=0)
    backfilled = models.PositiveIntegerField(default=0)
    requested_by = models.CharField(max_length=150, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            # the client's Idempotency-Key: one replay per key and tenant
            models.UniqueConstraint(
                fields=["tenant", "idempotency_key"], name="outbox_replay_tenant_idem_key_uniq"
            ),
        ]

    def __str__(self):
        return f"replay {self.target_id} {self.since:%Y-%m-%d %H:%M}…{self.until:%Y-%m-%d %H:%M}"


class WorkerHeartbeat(models.Model):
    """One row per running outbox worker, refreshed every few seconds (health check)."""

    worker_id = models.CharField(max_length=100, primary_key=True)
    started_at = models.DateTimeField()
    last_seen_at = models.DateTimeField()
    delivered = models.PositiveBigIntegerField(default=0)
    stopped_at = models.DateTimeField(null=True, blank=True)

    def __str__(self):
        return self.worker_id
