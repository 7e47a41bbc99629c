"""`manage.py outbox_prune`: delete delivered history in short batches (docs/history.md)."""

from django.core.management.base import CommandError

from core.commands import StoppableCommand
from outbox import conf
from outbox.retention import attempts_prune, events_prune, stats_prune


class Command(StoppableCommand):
    help = (
        "Delete events whose deliveries all succeeded (older than --older-than days, default "
        "OUTBOX_PRUNE_DAYS), the attempts of delivered deliveries (older than --attempts-older-"
        "than, default OUTBOX_ATTEMPT_RETENTION_DAYS) and old per-minute counters. Open, dead "
        "and cancelled deliveries and their events stay. Safe while the worker delivers."
    )

    def add_arguments(self, parser):
        parser.add_argument("--older-than", type=int, metavar="DAYS")
        parser.add_argument("--attempts-older-than", type=int, metavar="DAYS")
        parser.add_argument("--batch-size", type=int, default=1000)
        parser.add_argument(
            "--pause", type=float, default=0.0, help="seconds to sleep between batches"
        )

    def handle(self, *args, older_than, attempts_older_than, batch_size, pause, **options):
        days = older_than or conf.get("OUTBOX_PRUNE_DAYS")
        attempt_days = attempts_older_than or conf.get("OUTBOX_ATTEMPT_RETENTION_DAYS")
        if days < 1 or attempt_days < 1:
            raise CommandError("--older-than and --attempts-older-than must be at least 1 day")
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1")
        steady = {
            "batch_size": batch_size,
            "should_stop": lambda: self.stop_requested,
            "pause_seconds": pause,
        }
        events = events_prune(older_than_days=days, progress=self._progress("events"), **steady)
        self.stdout.write(f"\npruned {events} delivered events older than {days} days")
        if self.stop_requested:
            return
        attempts = attempts_prune(
            older_than_days=attempt_days, progress=self._progress("attempts"), **steady
        )
        self.stdout.write(
            f"\npruned {attempts} attempts of delivered deliveries older than {attempt_days} days"
        )
        self.stdout.write(f"pruned {stats_prune()} per-minute counter rows")

    def _progress(self, what: str):
        def progress(total):
            self.stdout.write(f"\rpruned {total} {what}…", ending="")
            self.stdout.flush()

        return progress
