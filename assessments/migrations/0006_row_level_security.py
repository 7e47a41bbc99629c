"""Deny by default: each tenant-owned table refuses rows outside the connection's scope
(row-level security, see tenants/rls_ddl.py and docs/tenancy.md)."""

from django.db import migrations

from tenants import rls_ddl


class Migration(migrations.Migration):
    dependencies = [("assessments", "0005_session_token_help_text")]

    operations = [
        rls_ddl.enable_for("assessments_assessmentsession"),
        rls_ddl.enable_for("assessments_submission"),
        rls_ddl.enable_for("assessments_analyticsevent"),
    ]
