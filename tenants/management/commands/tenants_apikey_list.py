from django.core.management.base import BaseCommand, CommandError

from tenants.models import Tenant
from tenants.selectors import apikey_list, tenant_get_by_name_or_id


class Command(BaseCommand):
    help = "List a tenant's API keys (prefixes only; full keys are never stored)."

    def add_arguments(self, parser):
        parser.add_argument("tenant", help="tenant name or id")

    def handle(self, *args, tenant, **options):
        try:
            tenant_obj = tenant_get_by_name_or_id(ref=tenant)
        except Tenant.DoesNotExist as exc:
            raise CommandError(f"no tenant {tenant!r}") from exc
        row = "{:<14} {:<12} {:<8} {:<20} {:<25} {:<25} {}"
        self.stdout.write(
            row.format("PREFIX", "KIND", "STATUS", "NAME", "CREATED", "LAST USED", "ORIGINS")
        )
        keys = list(apikey_list(tenant=tenant_obj))
        for key in keys:
            self.stdout.write(
                row.format(
                    key.prefix,
                    key.kind,
                    "active" if key.is_active else "revoked",
                    key.name[:20],
                    key.created_at.isoformat(timespec="seconds"),
                    key.last_used_at.isoformat(timespec="seconds") if key.last_used_at else "-",
                    ",".join(key.allowed_origins) or "-",
                )
            )
        self.stdout.write(f"{len(keys)} key(s)")
