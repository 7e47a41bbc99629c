"""/metrics series read from PostgreSQL at scrape time (every process reports the same truth).

States are gauges (pending, dead, circuit, payments by status). Activity that is pruned from
the database (delivery attempts, upload retry runs) is reported over the last
METRICS_WINDOW_MINUTES as gauges and histograms named `..._window`: a counter computed from
pruned rows would go down at every prune and read as a counter reset.

If the database cannot be read the scrape still succeeds with `atlas_metrics_db_up 0`, so
the API counters stay visible and the outage is a series an alert can use.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.db import DatabaseError
from django.db.models import Count, DurationField, ExpressionWrapper, F, Min, Q, Sum
from django.utils import timezone
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

logger = logging.getLogger(__name__)

# Seconds: HTTP call durations are milliseconds to seconds; end-to-end delivery up to hours.
ATTEMPT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
LATENCY_BUCKETS = (0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 6 * 3600, 24 * 3600)


def collect_metrics():
    try:
        families = [
            *_outbox(),
            *_uploads(),
            *_payments(),
            *_assessments(),
        ]
    except DatabaseError as exc:
        logger.warning("metrics: database unreadable (%s)", exc)
        yield _gauge("atlas_metrics_db_up", "1 when the database series could be read", 0)
        return
    yield _gauge("atlas_metrics_db_up", "1 when the database series could be read", 1)
    yield from families


def _gauge(name, doc, value):
    family = GaugeMetricFamily(name, doc)
    family.add_metric([], value)
    return family


def _since():
    return timezone.now() - timedelta(minutes=settings.METRICS_WINDOW_MINUTES)


# --- outbox --------------------------------------------------------------------------------


def _outbox():
    from outbox import conf
    from outbox.models import Delivery, DeliveryAttempt, Target, WorkerHeartbeat
    from outbox.selectors import lag_seconds

    now = timezone.now()
    labels = ["tenant", "target", "kind"]
    pending = GaugeMetricFamily(
        "atlas_outbox_pending_deliveries", "Open (pending or retrying) deliveries", labels=labels
    )
    dead = GaugeMetricFamily("atlas_outbox_dead_deliveries", "Dead deliveries", labels=labels)
    oldest = GaugeMetricFamily(
        "atlas_outbox_target_lag_seconds", "Age of the oldest open delivery", labels=labels
    )
    circuit = GaugeMetricFamily(
        "atlas_outbox_circuit_state",
        "Circuit breaker state per target (1 for the current state)",
        labels=[*labels, "state"],
    )
    # Only open and dead rows are read (the (target, status, created_at) index), never the
    # delivered history; targets without such rows still get their zeros.
    counts: dict = {}
    for row in (
        Delivery.objects.filter(status__in=[*Delivery.OPEN_STATUSES, Delivery.Status.DEAD])
        .values("target_id", "status")
        .annotate(n=Count("id"), oldest=Min("created_at"))
        .order_by()
    ):
        entry = counts.setdefault(row["target_id"], {"open": 0, "dead": 0, "oldest": None})
        if row["status"] == Delivery.Status.DEAD:
            entry["dead"] += row["n"]
        else:
            entry["open"] += row["n"]
            if entry["oldest"] is None or row["oldest"] < entry["oldest"]:
                entry["oldest"] = row["oldest"]
    for target in Target.objects.select_related("tenant").order_by("tenant__name", "name"):
        values = [target.tenant.name, target.name, target.kind]
        entry = counts.get(target.pk, {"open": 0, "dead": 0, "oldest": None})
        pending.add_metric(values, entry["open"])
        dead.add_metric(values, entry["dead"])
        age = (now - entry["oldest"]).total_seconds() if entry["oldest"] else 0.0
        oldest.add_metric(values, age)
        for state in Target.Circuit.values:
            circuit.add_metric([*values, state], 1 if target.circuit_state == state else 0)

    lag = _gauge(
        "atlas_outbox_lag_seconds",
        "Age of the oldest due, undelivered delivery (0 when nothing waits)",
        lag_seconds(),
    )
    stale = now - timedelta(seconds=conf.get("OUTBOX_HEARTBEAT_STALE_SECONDS"))
    workers = _gauge(
        "atlas_outbox_workers_alive",
        "Outbox workers with a fresh heartbeat",
        WorkerHeartbeat.objects.filter(last_seen_at__gte=stale, stopped_at__isnull=True).count(),
    )

    since = _since()
    attempts = GaugeMetricFamily(
        "atlas_outbox_attempts_window",
        f"Delivery attempts in the last {settings.METRICS_WINDOW_MINUTES} min by outcome",
        labels=["kind", "outcome"],
    )
    recent = DeliveryAttempt.objects.filter(created_at__gte=since)
    for row in (
        recent.values("delivery__target__kind", "outcome")
        .annotate(n=Count("id"))
        .order_by("delivery__target__kind", "outcome")
    ):
        attempts.add_metric([row["delivery__target__kind"], row["outcome"]], row["n"])

    durations = _histogram(
        "atlas_outbox_attempt_duration_seconds_window",
        f"Duration of delivery attempts (HTTP call) in the last "
        f"{settings.METRICS_WINDOW_MINUTES} min",
        recent.values("delivery__target__kind"),
        "delivery__target__kind",
        F("duration_ms"),
        ATTEMPT_BUCKETS,
        scale=1000.0,
    )
    delivered = Delivery.objects.filter(status="delivered", delivered_at__gte=since).annotate(
        latency=ExpressionWrapper(F("delivered_at") - F("created_at"), output_field=DurationField())
    )
    latency = _histogram(
        "atlas_outbox_delivery_latency_seconds_window",
        f"Publish-to-delivered latency of deliveries delivered in the last "
        f"{settings.METRICS_WINDOW_MINUTES} min",
        delivered.values("target__kind"),
        "target__kind",
        F("latency"),
        LATENCY_BUCKETS,
        as_duration=True,
    )
    return [pending, dead, oldest, circuit, lag, workers, attempts, durations, latency]


def _histogram(name, doc, rows, label, expr, buckets, *, scale=1.0, as_duration=False):
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


# --- uploads -------------------------------------------------------------------------------


def _uploads():
    from uploads.models import RETRY_RUN_SOURCES, Attachment, RetryLog

    by_status = GaugeMetricFamily(
        "atlas_uploads_attachments", "Attachments by status", labels=["status"]
    )
    counts = dict(Attachment.objects.values_list("status").annotate(n=Count("id")).order_by())
    for status in Attachment.Status.values:
        by_status.add_metric([status], counts.get(status, 0))

    window = settings.METRICS_WINDOW_MINUTES
    retries = GaugeMetricFamily(
        "atlas_uploads_retries_window",
        f"Attachments retried by retry runs in the last {window} min, by source and outcome",
        labels=["source", "outcome"],
    )
    runs = GaugeMetricFamily(
        "atlas_uploads_retry_runs_window",
        f"Retry runs started in the last {window} min by source",
        labels=["source"],
    )
    sums = {
        row["source"]: row
        for row in RetryLog.objects.filter(started_at__gte=_since())
        .values("source")
        .annotate(runs=Count("id"), ok=Sum("succeeded"), failed=Sum("failed"))
        .order_by()
    }
    for source in RETRY_RUN_SOURCES:
        row = sums.get(source.value, {})
        runs.add_metric([source.value], row.get("runs") or 0)
        retries.add_metric([source.value, "succeeded"], row.get("ok") or 0)
        retries.add_metric([source.value, "failed"], row.get("failed") or 0)
    return [by_status, retries, runs]


# --- payments ------------------------------------------------------------------------------


def _payments():
    from payments.models import PaymentSession, PaymentStatus

    family = GaugeMetricFamily(
        "atlas_payments_sessions", "Payment sessions by status", labels=["status"]
    )
    counts = dict(PaymentSession.objects.values_list("status").annotate(n=Count("id")).order_by())
    for status in PaymentStatus.values:
        family.add_metric([status], counts.get(status, 0))
    cutoff = timezone.now() - timedelta(hours=settings.OPS_PAYMENTS_STALE_HOURS)
    stale = _gauge(
        "atlas_payments_stale_pending",
        f"Payment sessions pending for more than {settings.OPS_PAYMENTS_STALE_HOURS} h",
        PaymentSession.objects.filter(status="pending", created_at__lt=cutoff).count(),
    )
    return [family, stale]


# --- assessments ---------------------------------------------------------------------------


def _assessments():
    """The assessments app's own counters (shared cache): analytics batches it could not store."""
    from assessments import metrics

    failures = metrics.events_store_failures()
    batches = CounterMetricFamily(
        "atlas_assessments_event_store_failures",
        "Analytics event batches that could not be stored (best effort)",
    )
    batches.add_metric([], failures["failures"] or 0)
    lost = CounterMetricFamily(
        "atlas_assessments_events_lost", "Analytics events lost in those batches"
    )
    lost.add_metric([], failures["lost_events"] or 0)
    return [batches, lost]
