"""Started / completed / abandoned counts and completion rate per tenant."""

from django.core.management.base import BaseCommand, CommandError

from assessments import metrics, selectors
from tenants.models import Tenant
from tenants.selectors import tenant_get_by_name_or_id


class Command(BaseCommand):
    help = "Session counts by status and completion rate for sessions created in the last N days."

    def add_arguments(self, parser):
        parser.add_argument("--days", type=int, default=7, help="look-back window (default 7)")
        parser.add_argument("--tenant", help="tenant name or id (default: every tenant)")

    def handle(self, *args, days, tenant, **options):
        if days < 1:
            raise CommandError("--days must be at least 1")
        tenant_id = self._tenant_id(tenant) if tenant else None
        rows = selectors.session_stats(days=days, tenant_id=tenant_id)
        header = f"{'tenant':<24} {'total':>7} {'started':>7} {'in_prog':>7} "
        header += f"{'done':>7} {'abandon':>7} {'rate':>6}"
        self.stdout.write(header)
        totals = dict.fromkeys(("total", "started", "in_progress", "completed", "abandoned"), 0)
        for row in rows:
            self.stdout.write(self._line(row["tenant__name"][:24], row))
            for key in totals:
                totals[key] += row[key]
        totals["completion_rate"] = (
            totals["completed"] / totals["total"] if totals["total"] else None
        )
        self.stdout.write(self._line("ALL", totals))
        failures = metrics.events_store_failures()
        self.stdout.write(
            f"sessions in the last {days} days: {totals['total']}, completed "
            f"{totals['completed']}, abandoned {totals['abandoned']}, completion rate "
            f"{self._rate(totals['completion_rate'])}; event batches not stored (all time): "
            f"{failures['failures']}"
        )

    def _tenant_id(self, value):
        try:
            return tenant_get_by_name_or_id(ref=value).id
        except Tenant.DoesNotExist as exc:
            raise CommandError(f"no tenant named or with id {value!r}") from exc

    def _rate(self, rate):
        return "-" if rate is None else f"{rate:.1%}"

    def _line(self, name, row):
        return (
            f"{name:<24} {row['total']:>7} {row['started']:>7} {row['in_progress']:>7} "
            f"{row['completed']:>7} {row['abandoned']:>7} {self._rate(row['completion_rate']):>6}"
        )
