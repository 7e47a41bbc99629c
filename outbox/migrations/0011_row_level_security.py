"""Deny by default: each tenant-owned table refuses rows outside the connection's scope
(row-level security, see tenants/rls_ddl.py and docs/tenancy.md)."""

from django.db import migrations

from tenants import rls_ddl


class Migration(migrations.Migration):
    dependencies = [("outbox", "0010_delivery_stats_unsettled_index")]

    operations = [
        rls_ddl.enable_for("outbox_outboxevent"),
        rls_ddl.enable_for("outbox_target"),
        rls_ddl.enable_for("outbox_delivery"),
        rls_ddl.enable_for("outbox_deliveryattempt"),
        rls_ddl.enable_for("outbox_circuittransition"),
        rls_ddl.enable_for("outbox_replayrequest"),
        rls_ddl.enable_for("outbox_deliverystat"),
    ]
