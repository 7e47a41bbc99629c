"""Idempotent demo set-up for `make run`: a demo tenant, an admin user, API keys and (with
--inbox-url) a webhook target delivering to the built-in inspector at /demo/inbox.

Full keys are shown once by design; for the demo they are kept in var/demo-credentials.json
(mode 600, never committed) so that every `make run` can print them again.
"""

import json
import os
import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from outbox.models import Target
from outbox.services import target_create, target_url_check
from tenants.models import ApiKey, Tenant
from tenants.selectors import tenant_get_by_name_or_id
from tenants.services import apikey_create, tenant_create

DEMO_TENANT = "Demo"
INBOX_TARGET = "inbox"


class Command(BaseCommand):
    help = "Create (once) the demo tenant, admin user and API keys; print how to use them."

    def add_arguments(self, parser):
        parser.add_argument(
            "--show", action="store_true", help="Only print the banner again (changes nothing)."
        )
        parser.add_argument("--quiet", action="store_true", help="Set up, print nothing.")
        parser.add_argument(
            "--inbox-url",
            help="Give the demo tenant a webhook target `inbox` delivering there (the inspector).",
        )

    def handle(self, *args, show=False, quiet=False, inbox_url=None, **options):
        path = settings.VAR_DIR / "demo-credentials.json"
        creds = json.loads(path.read_text()) if path.exists() else {}
        if show:
            if not creds:
                self.stderr.write("No demo yet: run `make run` (or manage.py atlas_demo) first.")
                return
            self.stdout.write(banner(creds))
            return

        with transaction.atomic():
            try:
                tenant = tenant_get_by_name_or_id(ref=DEMO_TENANT)
            except Tenant.DoesNotExist:
                tenant = tenant_create(name=DEMO_TENANT)
            creds["tenant_id"] = str(tenant.id)
            creds["admin_password"] = self._ensure_admin(creds.get("admin_password"))
            base = settings.ATLAS_BASE_URL.rstrip("/")
            origins = sorted({base, base.replace("127.0.0.1", "localhost")})
            for kind, field in (("secret", "secret_key"), ("publishable", "publishable_key")):
                if not self._key_is_live(creds.get(field)):
                    _key, creds[field] = apikey_create(
                        tenant=tenant, kind=kind, name="demo", allowed_origins=origins
                    )
            if inbox_url:
                self._ensure_inbox_target(tenant, inbox_url)

        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(creds, indent=2))
        os.chmod(path, 0o600)
        if not quiet:
            self.stdout.write(banner(creds))

    def _ensure_inbox_target(self, tenant, url):
        """The inspector's target; its URL follows the port of this run. The egress guard
        must allow the address (atlas_run allows exactly this loopback address)."""
        target_url_check(url)
        target = Target.objects.filter(tenant=tenant, name=INBOX_TARGET).first()
        if target is None:
            target_create(tenant=tenant, name=INBOX_TARGET, kind="webhook", url=url)
        elif target.url != url:
            Target.objects.filter(pk=target.pk).update(url=url)

    def _ensure_admin(self, password):
        user_model = get_user_model()
        user = user_model.objects.filter(username="admin").first()
        password = os.environ.get("ATLAS_ADMIN_PASSWORD") or password or secrets.token_urlsafe(9)
        if user is None:
            user_model.objects.create_superuser("admin", "admin@example.com", password)
        elif not user.check_password(password):
            user.set_password(password)
            user.save(update_fields=["password"])
        return password

    def _key_is_live(self, raw) -> bool:
        if not raw:
            return False
        return ApiKey.objects.filter(prefix=raw[:11], revoked_at__isnull=True).exists()


def banner(creds: dict) -> str:
    """What `make run` prints last, once every process is up (and `atlas_demo --show`)."""
    base = settings.ATLAS_BASE_URL.rstrip("/")
    realtime = settings.ATLAS_REALTIME_BASE_URL.rstrip("/")
    rule = "─" * 72
    lines = [
        "",
        rule,
        " Atlas is running — try it: open the demo, submit, watch the inspector",
        rule,
        f"  demo assessment    {base}/demo/",
        f"  webhook inspector  {base}/demo/inbox   (the demo tenant's target `inbox`)",
        f"  operations console {base}/admin/   login: admin / {creds['admin_password']}",
        f"  API docs           {base}/api/docs/   (ReDoc: {base}/api/redoc/)",
        f"  realtime (SSE)     {realtime}/api/realtime/stream",
        f"  health             {base}/health",
        "",
        f"  demo tenant        {creds['tenant_id']}",
        f"  secret key         {creds['secret_key']}",
        f"  publishable key    {creds['publishable_key']}",
        "",
        "  Ctrl-C stops everything. The embedded PostgreSQL keeps running: `make stop-db`.",
        "  This banner again: .venv/bin/python manage.py atlas_demo --show",
        rule,
        "",
    ]
    return "\n".join(lines)
