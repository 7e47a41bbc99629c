from core.ops import AtlasAppConfig


class OutboxConfig(AtlasAppConfig):
    default = True
    name = "outbox"
    default_auto_field = "django.db.models.BigAutoField"
    ops_module = "outbox.ops"

    def ready(self) -> None:
        super().ready()
        # a new tenant starts with the default targets from settings (N8N_, SLACK_WEBHOOK_URL)
        from outbox.services import target_defaults_create
        from tenants.onboarding import tenant_setup_register

        tenant_setup_register(target_defaults_create)
