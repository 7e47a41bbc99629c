"""Helpers for metric families apps compute from PostgreSQL at scrape time."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db.models import Count, Q, Sum
from django.utils import timezone
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily


def gauge(name: str, doc: str, value) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc)
    family.add_metric([], value)
    return family


def window_start():
    """Activity that is pruned is reported over the last METRICS_WINDOW_MINUTES."""
    return timezone.now() - timedelta(minutes=settings.METRICS_WINDOW_MINUTES)


def histogram(name, doc, rows, label, expr, buckets, *, scale=1.0, as_duration=False):
    """One GROUP BY query: a COUNT per bucket (cumulative by construction) and the sum."""

    def bound(b):
        return timedelta(seconds=b) if as_duration else b * scale

    aggregates = {
        f"le_{i}": Count("pk", filter=Q(**{"v__lte": bound(b)})) for i, b in enumerate(buckets)
    }
    rows = rows.annotate(v=expr).values(label).annotate(n=Count("pk"), s=Sum("v"), **aggregates)
    family = HistogramMetricFamily(name, doc, labels=["kind"])
    for row in rows.order_by(label):
        total = row["s"] or 0
        total = total.total_seconds() if as_duration and total else total / scale
        counts = [(str(float(b)), row[f"le_{i}"]) for i, b in enumerate(buckets)]
        family.add_metric([row[label]], counts + [("+Inf", row["n"])], sum_value=total)
    return family
