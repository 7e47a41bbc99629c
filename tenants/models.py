import uuid

from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.db.models import Q

from core.models import TimeStampedModel


class Tenant(TimeStampedModel):
    """A company using Atlas: owns every domain row."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=200, unique=True)
    is_active = models.BooleanField(default=True)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name


class ApiKey(TimeStampedModel):
    class Kind(models.TextChoices):
        PUBLISHABLE = "publishable", "Publishable (browser)"
        SECRET = "secret", "Secret (server)"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="api_keys")
    name = models.CharField(max_length=100, blank=True)
    kind = models.CharField(max_length=20, choices=Kind.choices)
    prefix = models.CharField(
        max_length=16, unique=True, help_text="Public part of the key (pk_xxxxxxxx), safe to show."
    )
    key_hash = models.CharField(
        max_length=64, unique=True, help_text="SHA-256 of the full key; the key itself is not kept."
    )
    allowed_origins = ArrayField(
        models.CharField(max_length=255),
        default=list,
        blank=True,
        help_text="Publishable keys: browser origins allowed to use the key (scheme://host[:port]).",
    )
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        # admin actions: each needs its own permission (see docs/security.md)
        permissions = [
            ("create_apikey", "Can create API keys (the full key is shown once)"),
            ("revoke_apikey", "Can revoke API keys"),
        ]
        constraints = [
            models.CheckConstraint(
                name="apikey_kind_valid", condition=Q(kind__in=["publishable", "secret"])
            ),
        ]

    def __str__(self):
        return f"{self.prefix}… ({self.kind})"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None
