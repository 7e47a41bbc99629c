"""Deny by default: each tenant-owned table refuses rows outside the connection's scope
(row-level security, see tenants/rls_ddl.py and docs/tenancy.md)."""

from django.db import migrations

from tenants import rls_ddl


class Migration(migrations.Migration):
    dependencies = [("payments", "0006_admin_action_permissions")]

    operations = [
        rls_ddl.enable_for("payments_paymentsession"),
        rls_ddl.enable_for("payments_allowedprice"),
        rls_ddl.enable_for("payments_stripeevent"),
        rls_ddl.enable_for("payments_stripeapifailure"),
    ]
