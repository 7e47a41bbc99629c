from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from core.errors import DomainError
from tenants.models import Tenant
from tenants.selectors import tenant_get_by_name_or_id
from tenants.services import apikey_create


class Command(BaseCommand):
    help = "Create an API key for a tenant and print the full key (shown only this once)."

    def add_arguments(self, parser):
        parser.add_argument("tenant", help="tenant name or id")
        parser.add_argument("--kind", choices=["secret", "publishable"], required=True)
        parser.add_argument("--name", default="")
        parser.add_argument(
            "--origin",
            action="append",
            default=[],
            dest="origins",
            help="publishable keys: an allowed browser origin (repeatable)",
        )

    def handle(self, *args, tenant, kind, name, origins, **options):
        try:
            tenant_obj = tenant_get_by_name_or_id(ref=tenant)
        except Tenant.DoesNotExist as exc:
            raise CommandError(f"no tenant {tenant!r}") from exc
        try:
            with transaction.atomic():
                key, raw = apikey_create(
                    tenant=tenant_obj, kind=kind, name=name, allowed_origins=origins
                )
        except DomainError as exc:
            raise CommandError(exc.message) from exc
        self.stderr.write(f"created {key.kind} key {key.prefix} for {tenant_obj.name}")
        self.stdout.write(raw)
