from django.contrib import admin, messages
from django.db import transaction

from core.admin import NoAddMixin, NoDeleteMixin, ReadOnlyInline
from tenants.models import ApiKey, Tenant
from tenants.services import apikey_create, apikey_revoke


class ApiKeyInline(ReadOnlyInline):
    model = ApiKey
    fields = (
        "prefix",
        "kind",
        "name",
        "allowed_origins",
        "created_at",
        "last_used_at",
        "revoked_at",
    )
    readonly_fields = fields


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    list_display = ("name", "id", "is_active", "created_at")
    list_filter = ("is_active",)
    search_fields = ("name", "id")
    readonly_fields = ("id", "created_at", "updated_at")
    inlines = [ApiKeyInline]
    actions = ["create_secret_key", "create_publishable_key"]

    def _create_key(self, request, queryset, kind):
        for tenant in queryset:
            with transaction.atomic():
                key, raw = apikey_create(tenant=tenant, kind=kind, name="admin")
            # Shown once: the full key is not stored.
            self.message_user(request, f"{tenant.name}: new {kind} key {raw}", messages.WARNING)

    @admin.action(description="Create a secret key (shown once)")
    def create_secret_key(self, request, queryset):
        self._create_key(request, queryset, ApiKey.Kind.SECRET)

    @admin.action(description="Create a publishable key (shown once)")
    def create_publishable_key(self, request, queryset):
        self._create_key(request, queryset, ApiKey.Kind.PUBLISHABLE)


@admin.register(ApiKey)
class ApiKeyAdmin(NoAddMixin, NoDeleteMixin, admin.ModelAdmin):
    """Keys are created from the tenant page or the command (the full key is shown once);
    never deleted, revoked instead: the row is the audit trail."""

    list_display = ("prefix", "tenant", "kind", "name", "created_at", "last_used_at", "revoked_at")
    list_filter = ("kind", ("revoked_at", admin.EmptyFieldListFilter), "tenant")
    list_select_related = ("tenant",)
    search_fields = ("prefix", "name", "tenant__name")
    readonly_fields = (
        "id",
        "tenant",
        "kind",
        "prefix",
        "key_hash",
        "created_at",
        "updated_at",
        "last_used_at",
        "revoked_at",
    )
    fields = (
        "id",
        "tenant",
        "kind",
        "name",
        "prefix",
        "allowed_origins",
        "key_hash",
        "created_at",
        "updated_at",
        "last_used_at",
        "revoked_at",
    )
    actions = ["revoke"]

    @admin.action(description="Revoke selected keys (effective at once)")
    def revoke(self, request, queryset):
        changed = sum(apikey_revoke(key=key) for key in queryset)
        self.message_user(request, f"Revoked {changed} key(s).")
