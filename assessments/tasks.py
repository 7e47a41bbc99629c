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
    ),
    ScheduleSpec(
        name="assessments.events_prune",
        func="assessments.tasks.analytics_events_prune",
        minutes=24 * 60,
        why="Analytics events older than ASSESSMENTS_EVENTS_RETENTION_DAYS go in short batches; "
        "daily keeps the table bounded without competing with daytime ingestion.",
    ),
]


def sessions_abandon_stale() -> int:
    from assessments import services

    return services.sessions_abandon_stale()


def analytics_events_prune() -> int:
    from assessments.retention import analytics_events_prune

    return analytics_events_prune()
