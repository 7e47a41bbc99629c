"""Helpers for metric families apps compute from PostgreSQL at scrape time."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.utils import timezone
from prometheus_client.core import GaugeMetricFamily


def gauge(name: str, doc: str, value) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc)
    family.add_metric([], value)
    return family


def window_start():
    """Activity that is pruned is reported over the last METRICS_WINDOW_MINUTES."""
    return timezone.now() - timedelta(minutes=settings.METRICS_WINDOW_MINUTES)
