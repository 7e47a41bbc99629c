"""A base for long management commands that stop cleanly on SIGTERM.

`self.stop_requested` turns true on SIGTERM; the command checks it between units of work
(after the current event, batch or attachment) and the previous handler is restored after
`handle()` returns, so a command called from a test or another command leaves no trace.
"""

from __future__ import annotations

import signal
import threading

from django.core.management.base import BaseCommand


class StoppableCommand(BaseCommand):
    stop_message = "SIGTERM: stopping after the current unit of work"

    def execute(self, *args, **options):
        self.stop_requested = False
        if threading.current_thread() is not threading.main_thread():
            return super().execute(*args, **options)  # signals can only be set in main
        previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        try:
            return super().execute(*args, **options)
        finally:
            signal.signal(signal.SIGTERM, previous)

    def _on_sigterm(self, signum, frame):
        self.stop_requested = True
        self.stderr.write(self.stop_message)
        self.on_stop()

    def on_stop(self) -> None:
        """Hook: commands that run a loop elsewhere (the outbox worker) tell it to stop."""
