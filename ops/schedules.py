"""Every django-q2 schedule, declared in code and created idempotently after migrate.

Each app declares its schedules (`SCHEDULES = [ScheduleSpec(...)]` in its tasks module,
offered through its ops module), each with a `why` saying why that interval.
`sync_schedules()` upserts them by name (a second migrate changes nothing) and removes none
it does not know about.
"""

from __future__ import annotations

from core.ops import ScheduleSpec, atlas_app_configs


def declared_schedules() -> list[ScheduleSpec]:
    return [spec for config in atlas_app_configs() for spec in config.schedules()]


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
