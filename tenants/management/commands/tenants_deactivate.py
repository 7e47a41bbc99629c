from django.core.management.base import BaseCommand, CommandError

from tenants.models import Tenant
from tenants.selectors import tenant_get_by_name_or_id
from tenants.services import tenant_activate, tenant_deactivate


class Command(BaseCommand):
    help = (
        "Deactivate a tenant (its keys are refused at once and its realtime streams end); "
        "--reactivate undoes it."
    )

    def add_arguments(self, parser):
        parser.add_argument("tenant", help="tenant name or id")
        parser.add_argument("--reactivate", action="store_true")

    def handle(self, *args, tenant, reactivate, **options):
        try:
            tenant_obj = tenant_get_by_name_or_id(ref=tenant)
        except Tenant.DoesNotExist as exc:
            raise CommandError(f"no tenant {tenant!r}") from exc
        if reactivate:
            changed = tenant_activate(tenant=tenant_obj)
            state = "reactivated" if changed else "was active already"
        else:
            changed = tenant_deactivate(tenant=tenant_obj)
            state = "deactivated" if changed else "was inactive already"
        self.stdout.write(f"{tenant_obj.name} {state}")
