"""Re-read pending payment sessions from Stripe (covers webhooks that never arrived)."""

from __future__ import annotations

from django.core.management.base import CommandError

from core.commands import StoppableCommand
from payments.services.reconciliation import payments_reconcile


class Command(StoppableCommand):
    help = "Bring pending payment sessions older than --older-than minutes up to date from Stripe."
    stop_message = "SIGTERM: stopping after the current session"

    def add_arguments(self, parser):
        parser.add_argument(
            "--older-than",
            type=int,
            default=None,
            metavar="MINUTES",
            help="Only sessions pending longer (default: PAYMENTS_RECONCILE_OLDER_THAN_MINUTES).",
        )
        parser.add_argument(
            "--limit", type=int, default=None, help="At most this many sessions (default: batch)."
        )

    def handle(self, *args, older_than, limit, **options):
        if older_than is not None and older_than < 0:
            raise CommandError("--older-than must be 0 or more")
        done = 0

        def progress(ps, note):
            nonlocal done
            done += 1
            self.stdout.write(f"[{done}] {ps.pk} {ps.stripe_checkout_session_id}: {note}")

        counts = payments_reconcile(
            older_than_minutes=older_than,
            limit=limit,
            progress=progress,
            should_stop=lambda: self.stop_requested,
        )
        self.stdout.write(
            f"reconciled: checked={counts['checked']} changed={counts['changed']} "
            f"unchanged={counts['unchanged']} errors={counts['errors']}"
            + (" (stopped early)" if counts.get("stopped") else "")
        )
        if counts["errors"]:
            raise CommandError(f"{counts['errors']} session(s) could not be reconciled")
