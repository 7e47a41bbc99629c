from core.ops import AtlasAppConfig


class OutboxConfig(AtlasAppConfig):
    default = True
    name = "outbox"
    default_auto_field = "django.db.models.BigAutoField"
    ops_module = "outbox.ops"
