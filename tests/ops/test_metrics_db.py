"""GET /metrics: the database-derived series after known activity (tests/ops/conftest.py)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from assessments import metrics as assessment_counters
from outbox.models import DeliveryStat
from tests.ops.conftest import stat_add
from tests.processes import run_django_snippet

pytestmark = pytest.mark.django_db


def scrape(client) -> dict:
    response = client.get("/metrics")
    assert response.status_code == 200
    samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name, **labels):
    return samples[(name, tuple(sorted(labels.items())))]


ACME_HOOK = {"tenant": "Acme", "target": "hook", "kind": "webhook"}
GLOBEX_ALERTS = {"tenant": "Globex", "target": "alerts", "kind": "slack"}


def test_outbox_series_per_target(client, world):
    s = scrape(client)
    assert value(s, "atlas_metrics_db_up") == 1
    assert value(s, "atlas_outbox_pending_deliveries", **ACME_HOOK) == 2
    assert value(s, "atlas_outbox_dead_deliveries", **ACME_HOOK) == 1
    assert value(s, "atlas_outbox_pending_deliveries", **GLOBEX_ALERTS) == 1
    assert value(s, "atlas_outbox_dead_deliveries", **GLOBEX_ALERTS) == 0
    assert value(s, "atlas_outbox_circuit_state", state="open", **GLOBEX_ALERTS) == 1
    assert value(s, "atlas_outbox_circuit_state", state="closed", **GLOBEX_ALERTS) == 0
    assert value(s, "atlas_outbox_circuit_state", state="closed", **ACME_HOOK) == 1
    assert value(s, "atlas_outbox_target_lag_seconds", **ACME_HOOK) > 0
    assert value(s, "atlas_outbox_lag_seconds") > 0
    assert value(s, "atlas_outbox_workers_alive") == 0


def test_attempts_by_outcome_and_duration_histogram(client, world):
    s = scrape(client)
    for outcome in ("delivered", "retry", "permanent"):
        assert value(s, "atlas_outbox_attempts_window", kind="webhook", outcome=outcome) == 1
    name = "atlas_outbox_attempt_duration_seconds_window"
    # durations 40, 120 and 900 ms
    assert value(s, f"{name}_bucket", kind="webhook", le="0.05") == 1
    assert value(s, f"{name}_bucket", kind="webhook", le="0.25") == 2
    assert value(s, f"{name}_bucket", kind="webhook", le="1.0") == 3
    assert value(s, f"{name}_bucket", kind="webhook", le="+Inf") == 3
    assert value(s, f"{name}_count", kind="webhook") == 3
    assert value(s, f"{name}_sum", kind="webhook") == pytest.approx(1.06)


def test_attempts_older_than_the_window_are_not_reported(client, world, settings):
    settings.METRICS_WINDOW_MINUTES = 30
    # the retry (and its 900 ms) was counted an hour ago
    DeliveryStat.objects.all().delete()
    stat_add(world["hook"], outcome="delivered", duration_ms=120.0)
    stat_add(world["hook"], outcome="permanent", duration_ms=40.0)
    hour_ago = timezone.now() - timedelta(hours=1)
    stat_add(world["hook"], at=hour_ago, outcome="retry", duration_ms=900.0)
    s = scrape(client)
    assert value(s, "atlas_outbox_attempts_window", kind="webhook", outcome="delivered") == 1
    assert ("atlas_outbox_attempts_window", (("kind", "webhook"), ("outcome", "retry"))) not in s
    name = "atlas_outbox_attempt_duration_seconds_window"
    assert value(s, f"{name}_count", kind="webhook") == 2


def test_delivery_latency_histogram(client, world):
    DeliveryStat.objects.update(latency_le=[0] * 12, latency_seconds_sum=0)
    stat_add(world["hook"], latency=2.0)  # delivered 2 s after it was published
    s = scrape(client)
    name = "atlas_outbox_delivery_latency_seconds_window"
    assert value(s, f"{name}_bucket", kind="webhook", le="1.0") == 0
    assert value(s, f"{name}_bucket", kind="webhook", le="5.0") == 1
    assert value(s, f"{name}_count", kind="webhook") == 1
    assert value(s, f"{name}_sum", kind="webhook") == pytest.approx(2.0)


def test_uploads_and_payments_series(client, world):
    s = scrape(client)
    assert value(s, "atlas_uploads_attachments", status="pending") == 3
    assert value(s, "atlas_uploads_attachments", status="failed") == 1
    # stored attachments are history: only those of the window are counted
    assert value(s, "atlas_uploads_stored_window") == 0
    assert ("atlas_uploads_attachments", (("status", "stored"),)) not in s
    assert value(s, "atlas_uploads_retries_window", source="scheduled", outcome="succeeded") == 3
    assert value(s, "atlas_uploads_retries_window", source="scheduled", outcome="failed") == 1
    assert value(s, "atlas_uploads_retries_window", source="manual", outcome="failed") == 0
    assert value(s, "atlas_uploads_retry_runs_window", source="scheduled") == 1
    assert value(s, "atlas_uploads_retry_runs_window", source="client-sync") == 0
    assert value(s, "atlas_payments_sessions", status="pending") == 2
    assert ("atlas_payments_sessions", (("status", "completed"),)) not in s  # settled: history
    assert value(s, "atlas_payments_sessions_window", status="completed") == 1
    assert value(s, "atlas_payments_sessions_window", status="refunded") == 1
    assert value(s, "atlas_payments_sessions_window", status="expired") == 0
    assert value(s, "atlas_payments_stale_pending") == 1


def test_assessment_event_storage_failures_are_exported(client, tenant):
    assert value(scrape(client), "atlas_assessments_event_store_failures_total") == 0
    assessment_counters.events_store_failure_record(
        tenant_id=tenant.pk, count=5, error=RuntimeError("statement timeout")
    )
    s = scrape(client)
    assert value(s, "atlas_assessments_event_store_failures_total") == 1
    assert value(s, "atlas_assessments_events_lost_total") == 5


def test_api_series_stay_served_when_the_database_is_down():
    code = (
        "from django.test import Client\n"
        "r = Client().get('/metrics')\n"
        "text = r.content.decode()\n"
        "print(r.status_code, 'atlas_metrics_db_up 0.0' in text,"
        " 'atlas_api_request_duration_seconds' in text)\n"
    )
    result = run_django_snippet(
        code, DATABASE_URL="postgres://nobody@127.0.0.1:1/none", DB_CONNECT_TIMEOUT="2"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["200", "True", "True"]
