"""Health: best-effort event storage leaves no rows when it fails, so report the counter.

Not critical (the API keeps answering 200); not ok while a failure is recent (15 min).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.utils import timezone

from assessments import metrics
from config.health import Check

RECENT = timedelta(minutes=15)


def health_checks() -> list[Check]:
    failures = metrics.events_store_failures()
    last = failures["last"] or {}
    last_at = datetime.fromisoformat(last["at"]) if last.get("at") else None
    recent = last_at is not None and timezone.now() - last_at < RECENT
    return [
        Check(
            "assessment_events_storage",
            not recent,
            False,
            {
                "failedBatches": failures["failures"],
                "lostEvents": failures["lost_events"],
                "lastFailureAt": last.get("at"),
            },
        )
    ]
