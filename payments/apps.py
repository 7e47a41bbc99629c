from core.ops import AtlasAppConfig


class PaymentsConfig(AtlasAppConfig):
    default = True
    name = "payments"
    default_auto_field = "django.db.models.BigAutoField"
    ops_module = "payments.ops"
