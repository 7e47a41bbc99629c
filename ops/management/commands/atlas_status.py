"""One screen for an operator: processes, lag, dead deliveries, failing targets, uploads,
payments. Exit code 0 healthy, 1 degraded, 2 down, so it can back a monitoring check."""

import json

from django.core.management.base import BaseCommand

from ops.status import CLUSTER_WAIT_SECONDS, EXIT_CODES, overall, status_report

MARK = {"ok": "ok  ", "degraded": "WARN", "down": "DOWN"}


class Command(BaseCommand):
    help = "Operations status; exit 0 healthy, 1 degraded, 2 down."
    requires_system_checks = []  # must answer (exit 2) even when the database is unreachable

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true", help="one JSON object instead")
        parser.add_argument(
            "--cluster-wait",
            type=float,
            default=CLUSTER_WAIT_SECONDS,
            help="seconds to look for a django-q2 cluster before calling it missing",
        )

    def handle(self, *args, **options):
        findings = status_report(cluster_wait=options["cluster_wait"])
        level = overall(findings)
        if options["json"]:
            body = {
                "status": level,
                "checks": {f.name: {"level": f.level, "summary": f.summary, "lines": f.lines}
                           for f in findings},
            }  # fmt: skip
            self.stdout.write(json.dumps(body))
        else:
            for finding in findings:
                self.stdout.write(f"[{MARK[finding.level]}] {finding.name:<16} {finding.summary}")
                for line in finding.lines:
                    self.stdout.write(f"       {'':<16} {line}")
            self.stdout.write(f"status: {level} (exit {EXIT_CODES[level]})")
        raise SystemExit(EXIT_CODES[level])
