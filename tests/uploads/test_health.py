"""Retry health report (selector, command), log pruning, the hourly health alert, schedules."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
import time_machine
from django.core.management import CommandError, call_command
from django.utils import timezone

from ops.schedules import declared_schedules
from outbox.models import OutboxEvent
from outbox.services import target_create
from tests.uploads.factories import staged_attachment
from uploads import selectors, tasks
from uploads.models import FinaliseAttempt, HealthAlert, RetryLog

pytestmark = pytest.mark.django_db


def _log(source, attempted, succeeded, failed, ago=timedelta(hours=1)):
    started = timezone.now() - ago
    return RetryLog.objects.create(
        source=source,
        started_at=started,
        finished_at=started,
        attempted=attempted,
        succeeded=succeeded,
        failed=failed,
    )


@pytest.fixture
def week_of_logs():
    _log("scheduled", 10, 8, 2)
    _log("scheduled", 4, 4, 0, ago=timedelta(days=2))
    _log("scheduled", 0, 0, 0, ago=timedelta(days=3))
    _log("client-sync", 5, 1, 4)
    _log("manual", 100, 0, 100, ago=timedelta(days=8))  # outside 7 days


def test_health_report_numbers_per_source(week_of_logs):
    report = {row["source"]: row for row in selectors.retry_health(days=7)}
    assert report["scheduled"] == {
        "source": "scheduled",
        "runs": 3,
        "attempted": 14,
        "succeeded": 12,
        "failed": 2,
        "success_rate": 85.71,
    }
    assert report["client-sync"]["success_rate"] == 20.0
    assert report["manual"] == {
        "source": "manual",
        "runs": 0,
        "attempted": 0,
        "succeeded": 0,
        "failed": 0,
        "success_rate": None,
    }
    assert {r["source"]: r["runs"] for r in selectors.retry_health(days=10)}["manual"] == 1


def test_health_per_day_has_every_day(week_of_logs):
    daily = selectors.retry_health_daily(days=7)
    assert len(daily) == 7 and daily[-1]["day"] == timezone.now().date()
    assert sum(day["attempted"] for day in daily) == 19
    assert sum(day["failed"] for day in daily) == 6


def test_uploads_health_command_prints_the_table(week_of_logs, capsys):
    call_command("uploads_health")
    out = capsys.readouterr().out
    assert "last 7 day(s)" in out
    line = next(row for row in out.splitlines() if row.startswith("scheduled"))
    assert line.split() == ["scheduled", "3", "14", "12", "2", "85.71"]
    call_command("uploads_health", "--days", "10", "--json")
    data = json.loads(capsys.readouterr().out)
    assert {r["source"]: r["attempted"] for r in data["sources"]}["manual"] == 100
    with pytest.raises(CommandError):
        call_command("uploads_health", "--days", "0")


def test_old_retry_logs_are_pruned(tenant):
    old = _log("scheduled", 1, 1, 0, ago=timedelta(days=31))
    kept = _log("scheduled", 1, 1, 0, ago=timedelta(days=29))
    attachment = staged_attachment(tenant)
    with time_machine.travel(timezone.now() - timedelta(days=31)):
        FinaliseAttempt.objects.create(
            tenant=tenant, attachment=attachment, source="scheduled", succeeded=True
        )
    assert tasks.prune_retry_logs() == 1
    assert list(RetryLog.objects.values_list("pk", flat=True)) == [kept.pk]
    assert not RetryLog.objects.filter(pk=old.pk).exists()
    assert FinaliseAttempt.objects.count() == 0


def _attempts(tenant, ok: int, failed: int):
    attachment = staged_attachment(tenant)
    FinaliseAttempt.objects.bulk_create(
        [
            FinaliseAttempt(tenant=tenant, attachment=attachment, source="scheduled", succeeded=s)
            for s in [True] * ok + [False] * failed
        ]
    )


@pytest.fixture
def slack(tenant):
    return target_create(
        tenant=tenant, name="slack", kind="slack", url="https://hooks.slack.example/services/T/B/x"
    )


def _alerts():
    return OutboxEvent.objects.filter(event_type="uploads.health_degraded")


def test_alert_fires_once_per_hour_when_failure_rate_passes_threshold(tenant, other_tenant, slack):
    start = timezone.now().replace(minute=5, second=0, microsecond=0)
    with time_machine.travel(start, tick=False):
        _attempts(tenant, ok=7, failed=3)  # 30 % of 10
        _attempts(other_tenant, ok=9, failed=1)  # 10 %: healthy
        assert tasks.health_alert_check() == 1
    with time_machine.travel(start + timedelta(minutes=20), tick=False):
        _attempts(tenant, ok=0, failed=5)
        assert tasks.health_alert_check() == 0  # same hour: not again
    assert _alerts().count() == 1
    event = _alerts().get()
    assert event.tenant_id == tenant.pk and event.topic == "uploads"
    assert event.payload["attempted"] == 10 and event.payload["failed"] == 3
    assert event.idempotency_key == f"uploads.health_degraded:{start:%Y-%m-%dT%H}"
    alert = HealthAlert.objects.get()
    assert (alert.outcome, alert.event_id) == ("fired", event.pk)

    with time_machine.travel(start + timedelta(hours=1), tick=False):
        _attempts(tenant, ok=2, failed=8)
        assert tasks.health_alert_check() == 1  # next hour, still failing: fires again
    assert _alerts().count() == 2


def test_no_alert_below_minimum_attempts_or_at_threshold(tenant, other_tenant):
    _attempts(tenant, ok=0, failed=9)  # 100 % but only 9 attempts
    _attempts(other_tenant, ok=8, failed=2)  # exactly 20 %: does not pass it
    assert tasks.health_alert_check() == 0
    assert _alerts().count() == 0 and HealthAlert.objects.count() == 0


def test_alert_is_skipped_and_recorded_when_tenant_has_no_slack_target(tenant):
    _attempts(tenant, ok=0, failed=10)  # this tenant has no target named "slack"
    assert tasks.health_alert_check() == 1
    alert = HealthAlert.objects.get()
    assert alert.outcome == "skipped" and "no slack target" in alert.reason
    assert alert.event_id is None
    assert _alerts().count() == 0
    assert tasks.health_alert_check() == 0  # recorded: not retried every 10 minutes


def test_uploads_schedules_are_declared():
    specs = {spec.name: spec for spec in declared_schedules() if spec.name.startswith("uploads.")}
    assert specs["uploads.retry_sweep"].minutes == 10
    assert specs["uploads.retry_sweep"].func == "uploads.tasks.retry_sweep"
    assert specs["uploads.prune_retry_logs"].minutes == 24 * 60
    assert "uploads.health_alert_check" in specs
    for spec in specs.values():
        module, _, name = spec.func.rpartition(".")
        assert callable(getattr(__import__(module, fromlist=[name]), name)) and spec.why
