"""Every django-q2 schedule, declared in code and created idempotently after migrate.

Each app lists its schedules in `<app>/tasks.py` as `SCHEDULES = [ScheduleSpec(...)]`, each
with a `why` saying why that interval. `sync_schedules()` upserts them by name (a second
migrate changes nothing) and removes none it does not know about.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

APPS_WITH_SCHEDULES = ("outbox", "uploads", "payments", "assessments", "tenants")


@dataclass(frozen=True)
class ScheduleSpec:
    name: str
    func: str  # dotted path of a task in <app>/tasks.py
    minutes: int  # interval; django-q2 looks at schedules about every 30 s
    why: str
    kwargs: dict | None = None


def declared_schedules() -> list[ScheduleSpec]:
    specs: list[ScheduleSpec] = []
    for app in APPS_WITH_SCHEDULES:
        try:
            module = importlib.import_module(f"{app}.tasks")
        except ModuleNotFoundError as exc:
            if exc.name != f"{app}.tasks":
                raise
            continue
        specs.extend(getattr(module, "SCHEDULES", []))
    return specs


def sync_schedules() -> list[tuple[str, bool]]:
    """Create or update each declared schedule; returns (name, created) pairs."""
    from django_q.models import Schedule

    results = []
    for spec in declared_schedules():
        _obj, created = Schedule.objects.update_or_create(
            name=spec.name,
            defaults={
                "func": spec.func,
                "schedule_type": Schedule.MINUTES,
                "minutes": spec.minutes,
                "kwargs": spec.kwargs or {},
                "repeats": -1,
            },
        )
        results.append((spec.name, created))
    return results
