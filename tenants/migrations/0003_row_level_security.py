"""Deny by default: each tenant-owned table refuses rows outside the connection's scope
(row-level security, see tenants/rls_ddl.py and docs/tenancy.md)."""

# API keys too: authentication looks a key up by its hash before any tenant is known, inside
# a narrow system scope (tenants.services.apikey_authenticate); every other read is scoped.

from django.db import migrations

from tenants import rls_ddl


class Migration(migrations.Migration):
    dependencies = [("tenants", "0002_admin_action_permissions")]

    operations = [
        rls_ddl.enable_for("tenants_apikey"),
    ]
