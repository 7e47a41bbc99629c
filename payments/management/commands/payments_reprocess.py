"""Re-run stored Stripe events (idempotent: conditional transitions, stable outbox keys)."""

from __future__ import annotations

import signal

from django.core.management.base import BaseCommand, CommandError

from payments import services


class Command(BaseCommand):
    help = "Re-run stored Stripe webhook events: --failed, --ids evt_… evt_…, --type …"

    def add_arguments(self, parser):
        parser.add_argument(
            "--failed", action="store_true", help="Only events that failed (or never finished)."
        )
        parser.add_argument("--ids", nargs="+", default=None, help="Stripe event ids (evt_…).")
        parser.add_argument("--type", nargs="+", default=None, dest="types", help="Event types.")

    def handle(self, *args, failed, ids, types, **options):
        if not (failed or ids or types):
            raise CommandError("say which events: --failed, --ids and/or --type")
        stop = {"requested": False}

        def _stop(*_):
            stop["requested"] = True
            self.stderr.write("SIGTERM: stopping after the current event")

        previous = signal.signal(signal.SIGTERM, _stop)
        done = {"n": 0}

        def progress(event, note):
            done["n"] += 1
            self.stdout.write(
                f"[{done['n']}] {event.stripe_event_id} {event.type}: {event.status} — {note}"
            )

        try:
            counts = services.stripe_events_reprocess(
                ids=ids,
                failed_only=failed,
                types=types,
                progress=progress,
                should_stop=lambda: stop["requested"],
            )
        finally:
            signal.signal(signal.SIGTERM, previous)
        summary = ", ".join(f"{k}={v}" for k, v in counts.items())
        self.stdout.write(f"reprocessed: {summary}")
        if ids and counts["total"] < len(set(ids)):
            raise CommandError(f"only {counts['total']} of {len(set(ids))} ids are stored")
        if counts["failed"]:
            raise CommandError(f"{counts['failed']} event(s) failed again")
