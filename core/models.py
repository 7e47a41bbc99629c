"""Abstract base models every app's tables share (no app of ours is imported here)."""

from django.db import models


class TimeStampedModel(models.Model):
    created_at = models.DateTimeField(auto_now_add=True, db_index=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        abstract = True


class TenantOwnedModel(TimeStampedModel):
    """Base for domain rows: every query goes through tenants.scoping (one choke point)."""

    # A string reference: core imports no app, the tenants app provides the model.
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.PROTECT, related_name="+")

    class Meta:
        abstract = True
