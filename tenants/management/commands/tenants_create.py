from django.core.management.base import BaseCommand, CommandError

from core.errors import DomainError
from tenants.services import tenant_create


class Command(BaseCommand):
    help = "Create a tenant and print its id."

    def add_arguments(self, parser):
        parser.add_argument("name")

    def handle(self, *args, name, **options):
        try:
            tenant = tenant_create(name=name)
        except DomainError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(str(tenant.id))
