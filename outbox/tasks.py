"""django-q2 entry points (thin, idempotent, short) and their schedules."""

from __future__ import annotations

import time

from core.ops import ScheduleSpec
from outbox import conf, operator_events

SCHEDULES = [
    ScheduleSpec(
        name="outbox.sweep",
        func="outbox.tasks.outbox_sweep",
        minutes=1,
        why="Keeps delivery going when no worker runs and picks up expired leases; claims use "
        "the same SKIP LOCKED lease, so it never touches a delivery a worker holds.",
    ),
    ScheduleSpec(
        name="outbox.prune",
        func="outbox.tasks.outbox_prune",
        minutes=24 * 60,
        why="Delivered events older than OUTBOX_PRUNE_DAYS, delivered attempts older than "
        "OUTBOX_ATTEMPT_RETENTION_DAYS and counters older than OUTBOX_STATS_RETENTION_HOURS are "
        "history nobody reads; daily, in short batches, keeps the tables bounded without "
        "competing with daytime traffic.",
    ),
]


def outbox_sweep(seconds: float | None = None) -> int:
    """Deliver whatever is due for at most OUTBOX_SWEEP_SECONDS (below the q2 timeout)."""
    from outbox.delivery import Deliverer

    budget = seconds if seconds is not None else conf.get("OUTBOX_SWEEP_SECONDS")
    deadline = time.monotonic() + budget
    deliverer = Deliverer(concurrency=8, worker_id="q2-sweep")
    handled = 0
    try:
        while time.monotonic() < deadline:
            batch = deliverer.run_once()
            handled += batch
            if batch == 0:
                break
    finally:
        deliverer.close()
    # deaths that came inside a delivery.dead notice's window get their notice once it ends
    operator_events.untold_dead_notices_publish()
    return handled


def outbox_prune() -> dict:
    from outbox.retention import outbox_prune_all

    return outbox_prune_all()
