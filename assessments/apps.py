from core.ops import AtlasAppConfig


class AssessmentsConfig(AtlasAppConfig):
    default = True
    name = "assessments"
    default_auto_field = "django.db.models.BigAutoField"
    ops_module = "assessments.ops"

    def ready(self):
        import assessments.schema  # noqa: F401 - registers the OpenAPI auth extension
