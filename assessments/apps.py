from django.apps import AppConfig


class AssessmentsConfig(AppConfig):
    name = "assessments"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        import assessments.schema  # noqa: F401 - registers the OpenAPI auth extension
