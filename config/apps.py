from django.apps import AppConfig


class AtlasConfig(AppConfig):
    """Project-wide pieces that are no domain app's: run/demo/health commands and checks."""

    name = "config"
    label = "atlas"
    verbose_name = "Atlas"

    def ready(self):
        from django.db.models.signals import post_migrate

        post_migrate.connect(_sync_schedules_after_migrate, sender=self)


def _sync_schedules_after_migrate(sender, using="default", **kwargs):
    """Schedules are created idempotently on every migrate (declared in <app>/tasks.py)."""
    from config.schedules import sync_schedules

    sync_schedules()
