"""`manage.py outbox_requeue`: put dead (or other) deliveries back in the queue, due now;
with --backfill, also give a target the deliveries it never had (replay, outbox/replay.py)."""

import uuid
from datetime import datetime

from django.core.management.base import CommandError
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from core.commands import StoppableCommand
from core.errors import DomainError
from core.progress import Progress
from outbox.models import Delivery, Target
from outbox.replay import MAX_DELIVERIES, replay_window_check, target_backfill
from outbox.services import delivery_requeue
from tenants.models import Tenant
from tenants.selectors import tenant_get_by_name_or_id

BATCH = 500
REQUEUEABLE = [
    Delivery.Status.DEAD,
    Delivery.Status.CANCELLED,
    Delivery.Status.RETRYING,
    Delivery.Status.DELIVERED,  # replay: send again what was delivered
]


def _when(value: str, option: str) -> datetime:
    when = parse_datetime(value)
    if when is None:
        try:
            when = datetime.fromisoformat(value)
        except ValueError as exc:
            raise CommandError(f"{option} {value!r} is not an ISO 8601 date") from exc
    return when if timezone.is_aware(when) else timezone.make_aware(when)


class Command(StoppableCommand):
    help = (
        "Requeue deliveries (default: dead ones) so the worker tries them again now; "
        "--backfill also creates a target's missing deliveries in the window."
    )
    stop_message = "SIGTERM: stopping after the current batch"

    def add_arguments(self, parser):
        parser.add_argument(
            "--status", default=Delivery.Status.DEAD.value, choices=[s.value for s in REQUEUEABLE]
        )
        parser.add_argument("--target", help="only this target name or id (any tenant)")
        parser.add_argument("--tenant", help="only this tenant (name or id)")
        parser.add_argument("--since", help="only events published at or after (ISO 8601)")
        parser.add_argument("--until", help="only events published before (ISO 8601)")
        parser.add_argument(
            "--backfill",
            action="store_true",
            help="with --target and --since: also create the deliveries the target never had "
            "for events it is subscribed to (e.g. created after they were published)",
        )
        parser.add_argument("--dry-run", action="store_true", help="count, change nothing")

    def handle(self, *args, status, target, tenant, since, until, backfill, dry_run, **options):
        queryset = Delivery.objects.filter(status=status)
        targets = Target.objects.all()
        if target:
            targets = targets.filter(name=target) | (
                targets.filter(pk=target) if _is_uuid(target) else targets.none()
            )
            queryset = queryset.filter(target__in=targets)
        if tenant:
            try:
                chosen = tenant_get_by_name_or_id(ref=tenant)
            except Tenant.DoesNotExist:
                raise CommandError(f"No tenant {tenant!r}.") from None
            queryset = queryset.filter(tenant=chosen)
            targets = targets.filter(tenant=chosen)
        since_at = _when(since, "--since") if since else None
        until_at = _when(until, "--until") if until else None
        if since_at:
            queryset = queryset.filter(event__created_at__gte=since_at)
        if until_at:
            queryset = queryset.filter(event__created_at__lt=until_at)
        if backfill and not (target and since_at):
            raise CommandError("--backfill needs --target and --since.")
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
                deliveries=Delivery.objects.filter(id__in=chunk, status=status),
                include_delivered=status == Delivery.Status.DELIVERED,
            )
            progress.update(start + len(chunk))
        progress.finish()
        self.stdout.write(f"requeued {done} of {len(ids)} {status} deliveries")
        if backfill:
            self._backfill(list(targets), since_at, until_at)

    def _backfill(self, targets, since, until) -> None:
        try:
            until = replay_window_check(since=since, until=until)
        except DomainError as exc:
            raise CommandError(exc.message) from exc
        progress = Progress(len(targets), "backfill", self.stdout)
        for index, target in enumerate(targets, 1):
            if self.stop_requested:
                break
            created = target_backfill(target=target, since=since, until=until)
            capped = " (capped: run again for the rest)" if created >= MAX_DELIVERIES else ""
            self.stdout.write(f"back-filled {created} deliveries for {target.name}{capped}")
            progress.update(index)
        progress.finish()


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True
