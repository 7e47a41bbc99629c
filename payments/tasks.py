"""django-q2 entry points (thin): each calls one service and returns a summary."""

from __future__ import annotations

from core.ops import ScheduleSpec
from payments.services import reconciliation

SCHEDULES = [
    ScheduleSpec(
        name="payments_reconcile",
        func="payments.tasks.payments_reconcile",
        minutes=15,
        why=(
            "Webhooks can be lost for good (endpoint down > 3 days, misconfigured secret): every "
            "15 min, pending sessions older than PAYMENTS_RECONCILE_OLDER_THAN_MINUTES are "
            "re-read from Stripe. Idempotent (conditional transitions, stable outbox keys) and "
            "bounded by PAYMENTS_RECONCILE_BATCH_SIZE so a run stays short."
        ),
    )
]


def payments_reconcile(older_than_minutes: int | None = None) -> dict:
    return reconciliation.payments_reconcile(older_than_minutes=older_than_minutes)
