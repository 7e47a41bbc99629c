import uuid

from django.db import models
from django.db.models import Q

from core.models import TenantOwnedModel
from core.validation import EMAIL_REGEX, is_json_object


class AssessmentSession(TenantOwnedModel):
    """One visitor's run through an assessment in the browser."""

    class Status(models.TextChoices):
        STARTED = "started"
        IN_PROGRESS = "in_progress"
        COMPLETED = "completed"
        ABANDONED = "abandoned"

    id = models.UUIDField(
        primary_key=True, default=uuid.uuid4, help_text="May come from the client."
    )
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.STARTED)
    email = models.CharField(max_length=254, null=True, blank=True)
    first_name = models.CharField(max_length=200, null=True, blank=True)
    form_data = models.JSONField(default=dict, blank=True)
    responses = models.JSONField(
        default=dict, blank=True, help_text="Answers keyed by question id (merged atomically)."
    )
    metadata = models.JSONField(default=dict, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    abandoned_at = models.DateTimeField(null=True, blank=True)
    last_activity_at = models.DateTimeField(null=True, blank=True)
    token_hash = models.CharField(
        max_length=64,
        null=True,
        blank=True,
        editable=False,
        help_text="SHA-256 of the session token handed to the browser that created it "
        "(core.session_proof); the token itself is never stored.",
    )

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(
                name="assessment_session_status_valid",
                condition=Q(status__in=["started", "in_progress", "completed", "abandoned"]),
            ),
            models.CheckConstraint(
                name="assessment_session_email_format",
                condition=Q(email__isnull=True) | Q(email__regex=EMAIL_REGEX),
            ),
            models.CheckConstraint(
                name="assessment_session_first_name_not_blank",
                condition=Q(first_name__isnull=True) | ~Q(first_name__regex=r"^\s*$"),
            ),
            models.CheckConstraint(
                name="assessment_session_form_data_object", condition=is_json_object("form_data")
            ),
            models.CheckConstraint(
                name="assessment_session_responses_object", condition=is_json_object("responses")
            ),
        ]
        indexes = [
            # admin and stats: a tenant's sessions by date
            models.Index(fields=["tenant", "created_at"], name="assess_sess_tenant_created"),
            # dashboard counts by status
            models.Index(fields=["tenant", "status"], name="assess_sess_tenant_status"),
            # admin search by email
            models.Index(fields=["email"], name="assess_sess_email"),
            # the abandon sweep: idle sessions that are still open
            models.Index(
                fields=["last_activity_at"],
                name="assess_sess_open_idle",
                condition=Q(status__in=["started", "in_progress"]),
            ),
        ]

    def __str__(self):
        return f"{self.id} ({self.status})"


class Submission(TenantOwnedModel):
    """A final answer set. The primary key is the client's submissionId: a retried submit
    with the same id can never create a second row (the database refuses it)."""

    id = models.UUIDField(primary_key=True, help_text="The client's submissionId (no default).")
    session = models.ForeignKey(
        AssessmentSession, on_delete=models.PROTECT, related_name="submissions"
    )
    answers = models.JSONField(default=dict)
    result = models.JSONField(null=True, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    request_hash = models.CharField(
        max_length=64,
        help_text="SHA-256 of the canonical request: a replay with another payload is refused.",
    )

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(
                name="assessment_submission_answers_object", condition=is_json_object("answers")
            ),
            models.CheckConstraint(
                name="assessment_submission_metadata_object", condition=is_json_object("metadata")
            ),
        ]
        indexes = [
            # GET /submissions (cursor on -created_at) for a tenant
            models.Index(fields=["tenant", "created_at"], name="assess_sub_tenant_created"),
            # GET /submissions?sessionId=
            models.Index(fields=["tenant", "session"], name="assess_sub_tenant_session"),
        ]

    def __str__(self):
        return f"submission {self.id}"


class AnalyticsEvent(TenantOwnedModel):
    """A best-effort analytics event from the browser, stored once per messageId."""

    id = models.BigAutoField(primary_key=True)
    message_id = models.CharField(max_length=100, help_text="Client id; duplicates are dropped.")
    name = models.CharField(max_length=100)
    # No FK: events may arrive before (or without) their session row; best-effort by design.
    session_id = models.UUIDField(null=True, blank=True)
    properties = models.JSONField(default=dict, blank=True)
    occurred_at = models.DateTimeField(help_text="The client's timestamp.")

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            # the dedupe: INSERT … ON CONFLICT (tenant_id, message_id) DO NOTHING
            models.UniqueConstraint(
                fields=["tenant", "message_id"], name="assess_event_tenant_message_uniq"
            ),
            models.CheckConstraint(
                name="assessment_event_properties_object", condition=is_json_object("properties")
            ),
        ]
        indexes = [
            # admin: newest events of a tenant
            models.Index(fields=["tenant", "created_at"], name="assess_event_tenant_created"),
            # admin / analysis: the events of one session
            models.Index(fields=["session_id"], name="assess_event_session"),
        ]

    def __str__(self):
        return f"{self.name} {self.message_id}"
