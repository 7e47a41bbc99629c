from core.ops import AtlasAppConfig


class UploadsConfig(AtlasAppConfig):
    default = True
    name = "uploads"
    default_auto_field = "django.db.models.BigAutoField"
    ops_module = "uploads.ops"

    def ready(self):
        super().ready()
        # A staging storage without local paths (object storage) stops start-up here, not at
        # the first upload: tus appends and fsyncs in place.
        from uploads import staging

        staging.staging_root()
