from django.apps import AppConfig


class AtlasConfig(AppConfig):
    """Project-wide pieces that are no domain app's: run/demo/health commands and checks."""

    name = "config"
    label = "atlas"
    verbose_name = "Atlas"
