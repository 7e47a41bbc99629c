"""django-q2 entry points for assessments (thin: they call services)."""

from core.ops import ScheduleSpec

SCHEDULES = [
    ScheduleSpec(
        name="assessments.sessions_abandon_stale",
        func="assessments.tasks.sessions_abandon_stale",
        minutes=15,
        why=(
            "Browsers that vanish without a pagehide beacon leave sessions in progress; "
            "15 min is fine-grained enough for stats and cheap (one indexed UPDATE)."
        ),
    )
]


def sessions_abandon_stale() -> int:
    from assessments import services

    return services.sessions_abandon_stale()
