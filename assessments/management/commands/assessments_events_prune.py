"""`manage.py assessments_events_prune`: delete old analytics events in short batches."""

from django.conf import settings
from django.core.management.base import CommandError

from assessments.retention import analytics_events_prune
from core.commands import StoppableCommand


class Command(StoppableCommand):
    help = (
        "Delete analytics events older than --older-than days (default "
        "ASSESSMENTS_EVENTS_RETENTION_DAYS), oldest first, in short batches."
    )

    def add_arguments(self, parser):
        parser.add_argument("--older-than", type=int, metavar="DAYS")
        parser.add_argument("--batch-size", type=int, default=5000)
        parser.add_argument(
            "--pause", type=float, default=0.0, help="seconds to sleep between batches"
        )

    def handle(self, *args, older_than, batch_size, pause, **options):
        days = older_than or settings.ASSESSMENTS_EVENTS_RETENTION_DAYS
        if days < 1 or batch_size < 1:
            raise CommandError("--older-than and --batch-size must be at least 1")

        def progress(total):
            self.stdout.write(f"\rpruned {total} analytics events…", ending="")
            self.stdout.flush()

        total = analytics_events_prune(
            older_than_days=days,
            batch_size=batch_size,
            progress=progress,
            should_stop=lambda: self.stop_requested,
            pause_seconds=pause,
        )
        self.stdout.write(f"\npruned {total} analytics events older than {days} days")
