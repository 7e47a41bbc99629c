from django.apps import AppConfig


class AtlasConfig(AppConfig):
    """Project-wide pieces that are no domain app's: run/demo/health commands and checks."""

    name = "config"
    label = "atlas"
    verbose_name = "Atlas"

    def ready(self):
        from django.apps import apps
        from django.db.models.signals import post_migrate

        # post_migrate fires per app with models; this app has none, so hook django_q's.
        post_migrate.connect(_sync_schedules_after_migrate, sender=apps.get_app_config("django_q"))


def _sync_schedules_after_migrate(sender, using="default", **kwargs):
    """Schedules are created idempotently on every migrate (declared in <app>/tasks.py)."""
    from config.schedules import sync_schedules

    sync_schedules()
