"""`manage.py outbox_prune --older-than DAYS`: delete fully delivered events, in batches."""

from django.core.management.base import BaseCommand, CommandError

from outbox.services import events_prune


class Command(BaseCommand):
    help = "Delete events whose deliveries all succeeded, older than N days (dead ones stay)."

    def add_arguments(self, parser):
        parser.add_argument("--older-than", type=int, required=True, metavar="DAYS")
        parser.add_argument("--batch-size", type=int, default=1000)

    def handle(self, *args, older_than, batch_size, **options):
        if older_than < 1:
            raise CommandError("--older-than must be at least 1 day")

        def progress(total):
            self.stdout.write(f"\rpruned {total} events…", ending="")
            self.stdout.flush()

        total = events_prune(older_than_days=older_than, batch_size=batch_size, progress=progress)
        self.stdout.write(f"\npruned {total} delivered events older than {older_than} days")
