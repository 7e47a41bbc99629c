"""`manage.py outbox_stats`: per target pending, lag, delivered/dead 24 h, success, circuit."""

import json

from django.core.management.base import BaseCommand

from outbox.selectors import lag_seconds, target_stats


class Command(BaseCommand):
    help = "Per-target delivery health: pending, lag, delivered/dead in 24 h, success rate."

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true", help="machine-readable output")

    def handle(self, *args, json: bool = False, **options):
        rows = target_stats()
        if json:
            self.stdout.write(_json({"lag_seconds": lag_seconds(), "targets": rows}))
            return
        columns = [
            "tenant",
            "target",
            "kind",
            "pending",
            "lag_seconds",
            "delivered_24h",
            "dead_24h",
            "success_rate_24h",
            "circuit",
            "paused",
        ]
        table = [columns] + [[_cell(row[c]) for c in columns] for row in rows]
        widths = [max(len(r[i]) for r in table) for i in range(len(columns))]
        for line in table:
            self.stdout.write(
                "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True))
            )
        self.stdout.write(f"overall lag: {lag_seconds():.1f}s; {len(rows)} targets")


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def _json(data) -> str:
    return json.dumps(data, default=str, indent=2)
