"""Tenants and their API keys in the console. Creating and revoking keys are permissions of
their own (tenants.create_apikey, tenants.revoke_apikey): viewing a tenant is not enough."""

from django.contrib import admin
from django.contrib.admin.models import ADDITION
from django.db import transaction
from django.template.response import TemplateResponse
from django.utils.cache import add_never_cache_headers

from core.admin import (
    NoAddMixin,
    NoDeleteMixin,
    ReadOnlyInline,
    log_admin_action,
    permission_check,
)
from tenants.models import ApiKey, Tenant
from tenants.services import apikey_create, apikey_revoke, tenant_activate, tenant_deactivate


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

    has_create_apikey_permission = permission_check("create_apikey")

    def save_model(self, request, obj, form, change):
        """is_active changes go through the services too: they make the tenant's cached keys
        stale and end its realtime streams at once (a plain save would leave both live until
        the key cache expired)."""
        super().save_model(request, obj, form, change)
        if change and "is_active" in form.changed_data:
            (tenant_activate if obj.is_active else tenant_deactivate)(tenant=obj)

    def _create_keys(self, request, queryset, kind: str, action: str):
        """The full keys go into this one response (never a message: messages travel in a
        cookie and are shown again on the next page), which no cache may keep."""
        tenants = list(queryset)
        created, skipped = [], []
        with transaction.atomic():
            for tenant in tenants:
                if not tenant.is_active:
                    skipped.append(tenant.name)
                    continue
                key, raw = apikey_create(tenant=tenant, kind=kind, name="admin")
                created.append({"tenant": tenant, "key": key, "raw": raw})
            for row in created:
                detail = f"Created {kind} key {row['key'].prefix}… for {row['tenant'].name}."
                for obj, flag in ((row["key"], ADDITION), (row["tenant"], None)):
                    log_admin_action(
                        request,
                        [obj],
                        action=action,
                        selected=len(tenants),
                        changed=len(created),
                        detail=detail,
                        flag=flag,
                    )
        context = {
            **self.admin_site.each_context(request),
            "title": f"New {kind} keys: shown once",
            "opts": self.opts,
            "created": created,
            "skipped": skipped,
        }
        response = TemplateResponse(request, "admin/tenants/apikey_created.html", context)
        add_never_cache_headers(response)  # Cache-Control: no-store (and no-cache, private)
        return response

    @admin.action(description="Create a secret key (shown once)", permissions=["create_apikey"])
    def create_secret_key(self, request, queryset):
        return self._create_keys(request, queryset, ApiKey.Kind.SECRET, "create_secret_key")

    @admin.action(
        description="Create a publishable key (shown once)", permissions=["create_apikey"]
    )
    def create_publishable_key(self, request, queryset):
        return self._create_keys(
            request, queryset, ApiKey.Kind.PUBLISHABLE, "create_publishable_key"
        )


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

    has_revoke_apikey_permission = permission_check("revoke_apikey")

    @admin.action(
        description="Revoke selected keys (effective at once)", permissions=["revoke_apikey"]
    )
    def revoke(self, request, queryset):
        keys = list(queryset)
        with transaction.atomic():
            changed = sum(apikey_revoke(key=key) for key in keys)
            log_admin_action(request, keys, action="revoke", selected=len(keys), changed=changed)
        self.message_user(request, f"Revoked {changed} key(s).")
