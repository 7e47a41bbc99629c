import uuid

from django.db import models
from django.db.models import Q

from assessments.models import is_json_object
from tenants.models import TenantOwnedModel


class OutboxEvent(TenantOwnedModel):
    """A business fact written in the same transaction as the data it describes.

    One row per publish. Delivery state per target is tracked by the outbox's delivery rows.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    topic = models.CharField(max_length=100, help_text="e.g. assessments, payments, uploads")
    event_type = models.CharField(max_length=100, help_text="e.g. assessment.submitted")
    payload = models.JSONField(default=dict)
    idempotency_key = models.CharField(
        max_length=255, help_text="Stable key receivers dedupe on; unique per tenant."
    )
    ordering_key = models.CharField(max_length=255, null=True, blank=True)
    occurred_at = models.DateTimeField()

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
        ]

    def __str__(self):
        return f"{self.event_type} {self.id}"
