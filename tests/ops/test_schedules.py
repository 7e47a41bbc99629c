"""Schedules: one row per declared schedule after repeated migrate / atlas_schedules runs."""

import io

import pytest
from django.core.management import call_command
from django.db.models import Count
from django_q.models import Schedule

from ops.schedules import declared_schedules

pytestmark = pytest.mark.django_db

# The intervals the issue asks for (minutes); each declared with a reason.
EXPECTED = {
    "outbox.sweep": 1,
    "uploads.retry_sweep": 10,
    "payments_reconcile": 15,
    "outbox.prune": 24 * 60,
    "assessments.events_prune": 24 * 60,
    "uploads.prune_retry_logs": 24 * 60,
    "uploads.health_alert_check": 10,
}


def test_second_migrate_and_sync_create_no_duplicates():
    call_command("migrate", verbosity=0)
    call_command("atlas_schedules", stdout=io.StringIO())
    call_command("atlas_schedules", stdout=io.StringIO())
    declared = {spec.name for spec in declared_schedules()}
    counts = dict(Schedule.objects.values_list("name").annotate(n=Count("id")))
    assert counts == {name: 1 for name in declared}
    for name, minutes in EXPECTED.items():
        assert Schedule.objects.get(name=name).minutes == minutes


def test_list_prints_next_runs_and_flags_undeclared_rows():
    Schedule.objects.create(name="old.renamed", func="math.floor", schedule_type="I", minutes=5)
    out = io.StringIO()
    call_command("atlas_schedules", "--list", stdout=out)
    lines = out.getvalue().splitlines()
    sweep = next(line for line in lines if line.startswith("outbox.sweep"))
    row = Schedule.objects.get(name="outbox.sweep")
    assert row.next_run.isoformat(timespec="seconds") in sweep and "1m" in sweep
    assert "old.renamed" in out.getvalue() and "not declared in code" in out.getvalue()
    assert lines[-1] == f"{len(declared_schedules())} schedule(s) declared"
