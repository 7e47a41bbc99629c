"""The retry health report: per source — runs, attempted, succeeded, failed, success rate;
then the storage quota use per tenant."""

from __future__ import annotations

import json

from django.core.management.base import BaseCommand, CommandError

from uploads.selectors import retry_health, tenant_quota_usage


class Command(BaseCommand):
    help = "Retry health per source over the last N days (default 7)."

    def add_arguments(self, parser):
        parser.add_argument("--days", type=int, default=7)
        parser.add_argument(
            "--json", action="store_true", dest="as_json", help="Print JSON instead of a table."
        )

    def handle(self, *args, days=7, as_json=False, **options):
        if days < 1:
            raise CommandError("--days must be at least 1")
        rows = retry_health(days=days)
        quotas = tenant_quota_usage()
        if as_json:
            self.stdout.write(json.dumps({"days": days, "sources": rows, "quotas": quotas}))
            return
        header = f"{'source':<12} {'runs':>6} {'attempted':>10} {'succeeded':>10} {'failed':>7} "
        self.stdout.write(f"Retry health, last {days} day(s)")
        self.stdout.write(header + f"{'success %':>10}")
        for row in rows:
            rate = "-" if row["success_rate"] is None else f"{row['success_rate']:.2f}"
            self.stdout.write(
                f"{row['source']:<12} {row['runs']:>6} {row['attempted']:>10} "
                f"{row['succeeded']:>10} {row['failed']:>7} {rate:>10}"
            )
        attempted = sum(r["attempted"] for r in rows)
        succeeded = sum(r["succeeded"] for r in rows)
        total_rate = f"{100 * succeeded / attempted:.2f}" if attempted else "-"
        self.stdout.write(
            f"{'total':<12} {sum(r['runs'] for r in rows):>6} {attempted:>10} {succeeded:>10} "
            f"{sum(r['failed'] for r in rows):>7} {total_rate:>10}"
        )
        self._quota_table(quotas)

    def _quota_table(self, quotas: list[dict]) -> None:
        self.stdout.write("")
        self.stdout.write("Storage quota per tenant (bytes; used = stored + reserved)")
        self.stdout.write(
            f"{'tenant':<24} {'stored':>14} {'reserved':>14} {'quota':>14} {'used %':>7} "
            f"{'open':>5} {'max open':>8}"
        )
        for row in quotas:
            self.stdout.write(
                f"{row['tenant'][:24]:<24} {row['stored_bytes']:>14} {row['reserved_bytes']:>14} "
                f"{row['quota_bytes']:>14} {row['used_percent']:>7.2f} {row['open_uploads']:>5} "
                f"{row['max_open_uploads']:>8}"
            )
        if not quotas:
            self.stdout.write("(no tenant holds any upload)")
