import pytest
from django.core.management import call_command
from django_q.models import Schedule

from core.ops import ScheduleSpec
from ops import schedules

pytestmark = pytest.mark.django_db

FAKE = [ScheduleSpec(name="test-sweep", func="math.floor", minutes=5, why="test")]


def test_sync_is_idempotent(monkeypatch):
    monkeypatch.setattr(schedules, "declared_schedules", lambda: FAKE)
    assert schedules.sync_schedules() == [("test-sweep", True)]
    assert schedules.sync_schedules() == [("test-sweep", False)]
    assert Schedule.objects.filter(name="test-sweep").count() == 1


def test_every_declared_schedule_exists_once_after_migrate():
    # pytest-django migrated the test database, which ran the post_migrate sync
    call_command("migrate", verbosity=0)  # a second migrate must not duplicate anything
    for spec in schedules.declared_schedules():
        row = Schedule.objects.get(name=spec.name)
        assert row.func == spec.func and row.minutes == spec.minutes
        assert spec.why, f"{spec.name} needs a reason for its interval"
