"""Retry finalising pending attachments now (source `manual`), with progress."""

from __future__ import annotations

from django.core.management.base import CommandError

from core.commands import StoppableCommand
from tenants.models import Tenant
from tenants.selectors import tenant_get_by_name_or_id
from uploads.models import RetrySource
from uploads.services.retries import retry_run


class Command(StoppableCommand):
    help = "Retry finalising pending attachments now (recorded as a `manual` retry run)."
    stop_message = "SIGTERM: stopping after the current attachment"

    def add_arguments(self, parser):
        parser.add_argument("--tenant", help="Tenant name or id (default: every tenant).")
        parser.add_argument("--limit", type=int, default=None, help="At most this many.")

    def handle(self, *args, tenant=None, limit=None, **options):
        tenant_id = None
        if tenant:
            try:
                tenant_id = tenant_get_by_name_or_id(ref=tenant).pk
            except Tenant.DoesNotExist:
                raise CommandError(f"No tenant {tenant!r}.") from None

        def progress(done, total, outcome):
            label = {True: "stored", False: "failed", None: "skipped"}[outcome]
            self.stdout.write(f"  [{done}/{total}] {label}")
            if self.stop_requested:
                # the run's finally block still writes its RetryLog row
                raise CommandError("stopped by SIGTERM; the run's log was written")

        log = retry_run(
            source=RetrySource.MANUAL, tenant_id=tenant_id, limit=limit, progress=progress
        )
        self.stdout.write(
            f"retry run {log.pk}: attempted {log.attempted}, succeeded {log.succeeded}, "
            f"failed {log.failed}"
        )
        if log.failed:
            raise CommandError(f"{log.failed} attachment(s) could not be stored yet")
