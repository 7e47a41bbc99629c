"""A small text progress bar for long outbox commands (no extra dependency)."""

import sys


class Progress:
    def __init__(self, total: int, label: str, stream=None, width: int = 30):
        self.total, self.label, self.width = max(total, 0), label, width
        self.stream = stream or sys.stdout
        self.done = 0

    def update(self, done: int):
        self.done = done
        share = done / self.total if self.total else 1.0
        bar = "#" * int(share * self.width)
        self.stream.write(f"\r{self.label} [{bar:<{self.width}}] {done}/{self.total} ({share:.0%})")
        self.stream.flush()

    def finish(self):
        self.update(self.done)
        self.stream.write("\n")
