import django.db.models.deletion
from django.db import migrations, models

# Only the index goes: a plain AlterField would also drop and re-add (re-validate) the
# tenant foreign key, which on a large event table is a long lock for nothing.
INDEX = "outbox_outboxevent_tenant_id_d1db4d11"


class Migration(migrations.Migration):
    dependencies = [
        ("outbox", "0004_fewer_indexes"),
        ("tenants", "0001_initial"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="outboxevent",
                    name="tenant",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="+",
                        to="tenants.tenant",
                    ),
                ),
            ],
            database_operations=[
                migrations.RunSQL(
                    f'DROP INDEX IF EXISTS "{INDEX}"',
                    reverse_sql=f'CREATE INDEX "{INDEX}" ON "outbox_outboxevent" ("tenant_id")',
                ),
            ],
        ),
    ]
