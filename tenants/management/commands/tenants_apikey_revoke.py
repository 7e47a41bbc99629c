from django.core.management.base import BaseCommand, CommandError

from tenants.models import ApiKey
from tenants.selectors import apikey_get_by_prefix
from tenants.services import apikey_revoke


class Command(BaseCommand):
    help = "Revoke an API key by its prefix (pk_xxxxxxxx / sk_xxxxxxxx); effective at once."

    def add_arguments(self, parser):
        parser.add_argument("prefix")

    def handle(self, *args, prefix, **options):
        try:
            key = apikey_get_by_prefix(prefix=prefix)
        except ApiKey.DoesNotExist as exc:
            raise CommandError(f"no key with prefix {prefix!r}") from exc
        changed = apikey_revoke(key=key)
        self.stdout.write(
            f"revoked {key.prefix}" if changed else f"{key.prefix} was revoked already"
        )
