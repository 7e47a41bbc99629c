"""Attachments (received files), their finalisation attempts, retry runs and health alerts."""

import uuid

from django.db import models
from django.db.models import F, Q

from core.models import TenantOwnedModel, TimeStampedModel
from tenants.models import Tenant


class RetrySource(models.TextChoices):
    """Who started a finalisation attempt."""

    UPLOAD = "upload", "Upload (inline, when the last byte arrived)"
    SCHEDULED = "scheduled", "Schedule (every 10 minutes)"
    CLIENT_SYNC = "client-sync", "Client back online"
    MANUAL = "manual", "Staff / operator"


RETRY_RUN_SOURCES = [RetrySource.SCHEDULED, RetrySource.CLIENT_SYNC, RetrySource.MANUAL]


class Attachment(TenantOwnedModel):
    """One file. Bytes land in the staging area, then are finalised into storage."""

    class Status(models.TextChoices):
        RECEIVING = "receiving"  # tus upload in progress
        PENDING = "pending"  # all bytes staged, not yet in storage (retried)
        STORED = "stored"  # in STORAGES["attachments"], verified
        FAILED = "failed"  # gave up after UPLOADS_MAX_ATTEMPTS (visible in the admin)

    class Channel(models.TextChoices):
        MULTIPART = "multipart"
        TUS = "tus"

    id = models.UUIDField(
        primary_key=True, default=uuid.uuid4, help_text="May come from the client (uploadId)."
    )
    assessment_session = models.ForeignKey(
        "assessments.AssessmentSession",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    channel = models.CharField(max_length=10, choices=Channel.choices)
    filename = models.CharField(max_length=255)
    content_type = models.CharField(max_length=255, default="application/octet-stream")
    size = models.BigIntegerField(help_text="Bytes (tus: the announced Upload-Length).")
    sha256 = models.CharField(
        max_length=64, blank=True, default="", help_text="Hex SHA-256 of the complete file."
    )
    expected_sha256 = models.CharField(
        max_length=64, blank=True, default="", help_text="What the client said it would be."
    )
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.RECEIVING)
    upload_offset = models.BigIntegerField(default=0, help_text="tus: bytes received so far.")
    tus_metadata = models.TextField(
        blank=True,
        default="",
        help_text="tus: the Upload-Metadata header as sent (HEAD echoes it).",
    )
    expires_at = models.DateTimeField(
        null=True, blank=True, help_text="tus: an unfinished upload is gone after this."
    )
    attempts = models.PositiveIntegerField(default=0, help_text="Finalisation attempts.")
    next_retry_at = models.DateTimeField(null=True, blank=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")
    last_retry_source = models.CharField(
        max_length=12, choices=RetrySource.choices, blank=True, default=""
    )
    claimed_until = models.DateTimeField(
        null=True, blank=True, help_text="A retry run holds this attachment until then."
    )
    claimed_by = models.UUIDField(
        null=True,
        blank=True,
        help_text="Who holds the claim: a retry run (its RetryLog id), or the upload's own "
        "inline finalising (a random id; taken over by a retry run after the lease).",
    )
    staging_host = models.CharField(
        max_length=255,
        blank=True,
        default="",
        help_text="The host (ATLAS_HOST_NAME) whose staging area received the bytes. With "
        "host-local staging only that host's retry runs finalise the attachment.",
    )
    staged_missing_since = models.DateTimeField(
        null=True,
        blank=True,
        help_text="Set while finalising finds no staged bytes here: retried with backoff, never "
        "failed for good (the bytes may be on a host that is down).",
    )
    missing_alerted_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="When the tenant's Slack target was told the bytes are missing.",
    )
    storage_name = models.CharField(max_length=500, blank=True, default="")
    stored_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        # admin actions: each needs its own permission (see docs/security.md)
        permissions = [
            ("retry_attachment", "Can retry finalising attachments"),
        ]
        constraints = [
            models.CheckConstraint(
                name="attachment_status_valid",
                condition=Q(status__in=["receiving", "pending", "stored", "failed"]),
            ),
            models.CheckConstraint(name="attachment_size_non_negative", condition=Q(size__gte=0)),
            models.CheckConstraint(
                name="attachment_offset_within_size",
                condition=Q(upload_offset__gte=0) & Q(upload_offset__lte=F("size")),
            ),
            models.CheckConstraint(
                name="attachment_sha256_hex",
                condition=Q(sha256="") | Q(sha256__regex=r"^[0-9a-f]{64}$"),
            ),
            models.CheckConstraint(
                name="attachment_stored_has_name",
                condition=~Q(status="stored") | (~Q(storage_name="") & Q(stored_at__isnull=False)),
            ),
            models.CheckConstraint(name="attachment_filename_not_blank", condition=~Q(filename="")),
        ]
        indexes = [
            # the retry sweep: due pending attachments, oldest first
            models.Index(
                fields=["next_retry_at"],
                name="attachment_pending_due",
                condition=Q(status="pending"),
            ),
            # expired tus uploads cleanup
            models.Index(
                fields=["expires_at"],
                name="attachment_receiving_expiry",
                condition=Q(status="receiving"),
            ),
            # admin: a tenant's attachments by age
            models.Index(fields=["tenant", "created_at"], name="attachment_tenant_created"),
            # admin: every tenant's attachments, newest first (no sort of the whole table)
            models.Index(fields=["created_at"], name="attachment_created"),
            # dashboard and /metrics: the unsettled attachments by tenant and status (stored
            # ones are history and never counted)
            models.Index(
                fields=["tenant", "status"],
                name="attachment_unsettled",
                condition=Q(status__in=["pending", "failed", "receiving"]),
            ),
            # dashboard and status: failed attachments (recent ones first), never the stored
            models.Index(
                fields=["tenant", "updated_at"],
                name="attachment_failed",
                condition=Q(status="failed"),
            ),
        ]

    def __str__(self):
        return f"{self.filename} ({self.status})"


class RetryLog(TimeStampedModel):
    """One retry run: who started it, when, and how it went (the retry health report)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    source = models.CharField(max_length=12, choices=RetrySource.choices)
    tenant = models.ForeignKey(
        Tenant,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="Set when the run was limited to one tenant (client-sync); empty = all.",
    )
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    attempted = models.PositiveIntegerField(default=0)
    succeeded = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True, default="", help_text="Set when the run itself broke.")

    class Meta:
        ordering = ["-started_at"]
        constraints = [
            models.CheckConstraint(
                name="retry_log_source_valid",
                condition=Q(source__in=["scheduled", "client-sync", "manual"]),
            ),
            models.CheckConstraint(
                name="retry_log_counts_add_up",
                condition=Q(attempted__gte=F("succeeded") + F("failed")),
            ),
        ]
        indexes = [
            # health report / pruning: runs by start time
            models.Index(fields=["started_at"], name="retry_log_started"),
        ]

    def __str__(self):
        return f"{self.source} run {self.started_at:%Y-%m-%d %H:%M}"


class FinaliseAttempt(TenantOwnedModel):
    """One try at moving an attachment into storage: the evidence behind every failure."""

    attachment = models.ForeignKey(Attachment, on_delete=models.CASCADE, related_name="tries")
    retry_log = models.ForeignKey(
        RetryLog, null=True, blank=True, on_delete=models.SET_NULL, related_name="tries"
    )
    source = models.CharField(max_length=12, choices=RetrySource.choices)
    succeeded = models.BooleanField()
    error = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            # health alert: a tenant's attempts of the last hour
            models.Index(fields=["tenant", "created_at"], name="finalise_attempt_tenant_at"),
        ]

    def __str__(self):
        return f"{'ok' if self.succeeded else 'failed'} {self.source}"


class HealthAlert(TenantOwnedModel):
    """The hourly health check's decision per tenant and hour: fired, or skipped and why."""

    class Outcome(models.TextChoices):
        FIRED = "fired"
        SKIPPED = "skipped"

    hour = models.DateTimeField(help_text="Start of the hour (UTC) this alert covers.")
    outcome = models.CharField(max_length=10, choices=Outcome.choices)
    reason = models.CharField(max_length=255, blank=True, default="")
    attempted = models.PositiveIntegerField()
    failed = models.PositiveIntegerField()
    failure_rate = models.FloatField()
    event_id = models.UUIDField(null=True, blank=True)

    class Meta:
        ordering = ["-hour"]
        constraints = [
            # at most one alert per tenant and hour
            models.UniqueConstraint(fields=["tenant", "hour"], name="health_alert_tenant_hour"),
        ]

    def __str__(self):
        return f"{self.outcome} {self.hour:%Y-%m-%d %H:00}"
