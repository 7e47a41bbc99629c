"""Idempotent demo set-up for `make run`: a demo tenant, an admin user and API keys.

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

from tenants.models import ApiKey, Tenant
from tenants.selectors import tenant_get_by_name_or_id
from tenants.services import apikey_create, tenant_create

DEMO_TENANT = "Demo"


class Command(BaseCommand):
    help = "Create (once) the demo tenant, admin user and API keys; print how to use them."

    def handle(self, *args, **options):
        path = settings.VAR_DIR / "demo-credentials.json"
        creds = json.loads(path.read_text()) if path.exists() else {}

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

        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(creds, indent=2))
        os.chmod(path, 0o600)
        self._print(creds)

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

    def _print(self, creds):
        base = settings.ATLAS_BASE_URL.rstrip("/")
        lines = [
            "",
            "Atlas is starting",
            f"  admin          {base}/admin/   login: admin / {creds['admin_password']}",
            f"  API docs       {base}/api/docs/",
            f"  demo page      {base}/demo/",
            f"  health         {base}/health",
            f"  demo tenant    {creds['tenant_id']}",
            f"  secret key     {creds['secret_key']}",
            f"  publishable    {creds['publishable_key']}",
            "",
        ]
        self.stdout.write("\n".join(lines))
