"""`manage.py outbox_requeue`: put dead (or other) deliveries back in the queue, due now."""

from datetime import datetime

from django.core.management.base import CommandError
from django.utils.dateparse import parse_datetime

from core.commands import StoppableCommand
from core.progress import Progress
from outbox.models import Delivery
from outbox.services import delivery_requeue
from tenants.models import Tenant
from tenants.selectors import tenant_get_by_name_or_id

BATCH = 500
REQUEUEABLE = [Delivery.Status.DEAD, Delivery.Status.CANCELLED, Delivery.Status.RETRYING]


class Command(StoppableCommand):
    help = "Requeue deliveries (default: dead ones) so the worker tries them again now."
    stop_message = "SIGTERM: stopping after the current batch"

    def add_arguments(self, parser):
        parser.add_argument(
            "--status", default=Delivery.Status.DEAD.value, choices=[s.value for s in REQUEUEABLE]
        )
        parser.add_argument("--target", help="only this target name (any tenant)")
        parser.add_argument("--tenant", help="only this tenant (name or id)")
        parser.add_argument("--since", help="only deliveries created at or after (ISO 8601)")
        parser.add_argument("--dry-run", action="store_true", help="count, change nothing")

    def handle(self, *args, status, target, tenant, since, dry_run, **options):
        queryset = Delivery.objects.filter(status=status)
        if target:
            queryset = queryset.filter(target__name=target)
        if tenant:
            try:
                queryset = queryset.filter(tenant=tenant_get_by_name_or_id(ref=tenant))
            except Tenant.DoesNotExist:
                raise CommandError(f"No tenant {tenant!r}.") from None
        if since:
            when = parse_datetime(since)
            if when is None:
                try:
                    when = datetime.fromisoformat(since)
                except ValueError as exc:
                    raise CommandError(f"--since {since!r} is not an ISO 8601 date") from exc
            queryset = queryset.filter(created_at__gte=when)
        ids = list(queryset.order_by("id").values_list("id", flat=True))
        if dry_run:
            self.stdout.write(f"would requeue {len(ids)} {status} deliveries (dry run)")
            return
        progress = Progress(len(ids), "requeue", self.stdout)
        done = 0
        for start in range(0, len(ids), BATCH):
            if self.stop_requested:
                break
            chunk = ids[start : start + BATCH]
            # status re-checked per row: a delivery that changed meanwhile is left alone
            done += delivery_requeue(
                deliveries=Delivery.objects.filter(id__in=chunk, status=status)
            )
            progress.update(start + len(chunk))
        progress.finish()
        self.stdout.write(f"requeued {done} of {len(ids)} {status} deliveries")
