"""Deny by default: each tenant-owned table refuses rows outside the connection's scope
(row-level security, see tenants/rls_ddl.py and docs/tenancy.md)."""

from django.db import migrations

from tenants import rls_ddl


class Migration(migrations.Migration):
    dependencies = [("uploads", "0006_attachment_history_indexes")]

    operations = [
        rls_ddl.enable_for("uploads_attachment"),
        rls_ddl.enable_for("uploads_retrylog"),
        rls_ddl.enable_for("uploads_finaliseattempt"),
        rls_ddl.enable_for("uploads_healthalert"),
    ]
