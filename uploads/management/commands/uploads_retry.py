"""Retry finalising pending attachments now (source `manual`), with progress."""

from __future__ import annotations

import signal

from django.core.management.base import BaseCommand, CommandError

from tenants.models import Tenant
from uploads import services
from uploads.models import RetrySource


class Command(BaseCommand):
    help = "Retry finalising pending attachments now (recorded as a `manual` retry run)."

    def add_arguments(self, parser):
        parser.add_argument("--tenant", help="Tenant name or id (default: every tenant).")
        parser.add_argument("--limit", type=int, default=None, help="At most this many.")

    def handle(self, *args, tenant=None, limit=None, **options):
        tenant_id = None
        if tenant:
            found = Tenant.objects.filter(name=tenant).first()
            if found is None:
                try:
                    found = Tenant.objects.filter(pk=tenant).first()
                except Exception:  # not a UUID
                    found = None
            if found is None:
                raise CommandError(f"No tenant {tenant!r}.")
            tenant_id = found.pk
        stop = {"requested": False}
        signal.signal(signal.SIGTERM, lambda *_: stop.update(requested=True))

        def progress(done, total, outcome):
            label = {True: "stored", False: "failed", None: "skipped"}[outcome]
            self.stdout.write(f"  [{done}/{total}] {label}")
            if stop["requested"]:
                raise CommandError("stopped by SIGTERM; the run's log was written")

        log = services.retry_run(
            source=RetrySource.MANUAL, tenant_id=tenant_id, limit=limit, progress=progress
        )
        self.stdout.write(
            f"retry run {log.pk}: attempted {log.attempted}, succeeded {log.succeeded}, "
            f"failed {log.failed}"
        )
        if log.failed:
            raise CommandError(f"{log.failed} attachment(s) could not be stored yet")
