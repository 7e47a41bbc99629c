"""Re-run stored Stripe events (idempotent: conditional transitions, stable outbox keys)."""

from __future__ import annotations

from django.core.management.base import CommandError

from core.commands import StoppableCommand
from payments.services.reconciliation import stripe_events_reprocess


class Command(StoppableCommand):
    help = "Re-run stored Stripe webhook events: --failed, --ids evt_… evt_…, --type …"
    stop_message = "SIGTERM: stopping after the current event"

    def add_arguments(self, parser):
        parser.add_argument(
            "--failed", action="store_true", help="Only events that failed (or never finished)."
        )
        parser.add_argument("--ids", nargs="+", default=None, help="Stripe event ids (evt_…).")
        parser.add_argument("--type", nargs="+", default=None, dest="types", help="Event types.")

    def handle(self, *args, failed, ids, types, **options):
        if not (failed or ids or types):
            raise CommandError("say which events: --failed, --ids and/or --type")
        done = 0

        def progress(event, note):
            nonlocal done
            done += 1
            self.stdout.write(
                f"[{done}] {event.stripe_event_id} {event.type}: {event.status} — {note}"
            )

        counts = stripe_events_reprocess(
            ids=ids,
            failed_only=failed,
            types=types,
            progress=progress,
            should_stop=lambda: self.stop_requested,
        )
        summary = ", ".join(f"{k}={v}" for k, v in counts.items())
        self.stdout.write(f"reprocessed: {summary}")
        if ids and counts["total"] < len(set(ids)):
            raise CommandError(f"only {counts['total']} of {len(set(ids))} ids are stored")
        if counts["failed"]:
            raise CommandError(f"{counts['failed']} event(s) failed again")
