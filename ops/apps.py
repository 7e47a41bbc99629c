from django.apps import AppConfig


class OpsConfig(AppConfig):
    """The operations console: dashboard, status, /health, /metrics, schedules and the
    run/demo commands. It asks each app for its contributions (core.ops.AtlasAppConfig)."""

    name = "ops"
    verbose_name = "Atlas operations"

    def ready(self):
        from django.apps import apps
        from django.db.models.signals import post_migrate

        # post_migrate fires per app with models; this app has none, so hook django_q's.
        post_migrate.connect(_sync_schedules_after_migrate, sender=apps.get_app_config("django_q"))


def _sync_schedules_after_migrate(sender, using="default", **kwargs):
    """Schedules are created idempotently on every migrate (declared by each app)."""
    from ops.schedules import sync_schedules

    sync_schedules()
