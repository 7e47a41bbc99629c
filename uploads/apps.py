from core.ops import AtlasAppConfig


class UploadsConfig(AtlasAppConfig):
    default = True
    name = "uploads"
    default_auto_field = "django.db.models.BigAutoField"
    ops_module = "uploads.ops"
