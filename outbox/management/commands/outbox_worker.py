"""`manage.py outbox_worker`: deliver outbox events until SIGTERM / Ctrl-C."""

import signal

from django.core.management.base import BaseCommand

from outbox.worker import Worker


class Command(BaseCommand):
    help = "Deliver due outbox events (wakes on NOTIFY, polls as a fallback). Stop with SIGTERM."

    def add_arguments(self, parser):
        parser.add_argument("--concurrency", type=int, help="parallel HTTP sends (default 32)")
        parser.add_argument("--batch-size", type=int, help="deliveries claimed per round")
        parser.add_argument("--poll", type=float, help="seconds between polls without NOTIFY")
        parser.add_argument("--once", action="store_true", help="exit when nothing is due")

    def handle(self, *args, concurrency, batch_size, poll, once, **options):
        worker = Worker(concurrency=concurrency, batch_size=batch_size, poll_seconds=poll)
        signal.signal(signal.SIGTERM, worker.request_stop)
        signal.signal(signal.SIGINT, worker.request_stop)
        self.stdout.write(f"outbox worker {worker.worker_id} running", ending="\n")
        self.stdout.flush()
        worker.run(exit_when_idle=once)
        self.stdout.write(f"stopped; delivered {worker.deliverer.delivered_total}")
