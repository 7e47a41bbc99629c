"""`manage.py outbox_worker`: deliver outbox events until SIGTERM / Ctrl-C."""

import signal

from core.commands import StoppableCommand
from outbox.worker import Worker


class Command(StoppableCommand):
    help = "Deliver due outbox events (wakes on NOTIFY, polls as a fallback). Stop with SIGTERM."
    stop_message = "SIGTERM: stopping after the sends in flight"

    def add_arguments(self, parser):
        parser.add_argument(
            "--concurrency", type=int, help="send slots: parallel HTTP sends (default 32)"
        )
        parser.add_argument("--batch-size", type=int, help="at most this many per claim")
        parser.add_argument("--poll", type=float, help="seconds between polls without NOTIFY")
        parser.add_argument("--once", action="store_true", help="exit when nothing is due")

    def handle(self, *args, concurrency, batch_size, poll, once, **options):
        self.worker = Worker(concurrency=concurrency, batch_size=batch_size, poll_seconds=poll)
        if self.stop_requested:  # SIGTERM came while the worker was being set up
            self.worker.request_stop()
        # Ctrl-C stops like SIGTERM does: the sends in flight finish and are recorded
        previous_sigint = signal.signal(signal.SIGINT, self._on_sigterm)
        try:
            self.stdout.write(f"outbox worker {self.worker.worker_id} running", ending="\n")
            self.stdout.flush()
            self.worker.run(exit_when_idle=once)
        finally:
            signal.signal(signal.SIGINT, previous_sigint)
        self.stdout.write(f"stopped; delivered {self.worker.deliverer.delivered_total}")

    def on_stop(self) -> None:
        worker = getattr(self, "worker", None)
        if worker is not None:
            worker.request_stop()
