"""The second wall: PostgreSQL row-level security refuses rows outside the declared scope,
even where application code forgets the tenant filter."""

from __future__ import annotations

import json

import pytest
from django.db import DatabaseError, connection, transaction

from assessments.models import AnalyticsEvent
from outbox.models import OutboxEvent
from tenants import rls
from tests.assessments.factories import EventFactory
from tests.conftest import client_for
from tests.factories import make_api_key
from tests.tenants.rls_world import tenant_models, two_tenants

pytestmark = [pytest.mark.django_db, pytest.mark.urls("tests.tenants.rls_urls")]

INSUFFICIENT_PRIVILEGE = "42501"  # "new row violates row-level security policy"


def _tables() -> list[str]:
    return sorted(model._meta.db_table for model in tenant_models())


def test_every_model_with_a_tenant_has_forced_rls_and_its_policies():
    """A new tenant table joins the wall with `rls_ddl.enable_for("<table>")` in a migration;
    this fails until it does."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity, "
            "array(SELECT p.policyname::text FROM pg_policies p "
            "      WHERE p.tablename = c.relname ORDER BY 1) "
            "FROM pg_class c WHERE c.relname = ANY(%s)",
            [_tables()],
        )
        found = {
            name: (enabled, forced, set(policies)) for name, enabled, forced, policies in cursor
        }
    missing = []
    for table in _tables():
        expected = (True, True, {f"{table}_system_rows", f"{table}_tenant_rows"})
        if found.get(table) != expected:
            missing.append(f"{table}: {found.get(table)}")
    assert len(_tables()) >= 17
    assert missing == [], f"tenant tables without row-level security: {missing}"


def test_policies_have_comments():
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname, p.polname FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid "
            "WHERE c.relname = ANY(%s) AND obj_description(p.oid, 'pg_policy') IS NULL",
            [_tables()],
        )
        assert cursor.fetchall() == []


def test_without_a_scope_every_tenant_table_is_empty_while_rows_exist():
    two_tenants()
    counts_as_system = {m._meta.db_table: m._default_manager.count() for m in tenant_models()}
    assert all(count >= 2 for count in counts_as_system.values()), counts_as_system
    with rls.no_scope(), connection.cursor() as cursor:
        for table in _tables():
            cursor.execute(f"SELECT count(*) FROM {table}")
            assert cursor.fetchone()[0] == 0, table
        assert {m._meta.db_table: m._default_manager.count() for m in tenant_models()} == {
            table: 0 for table in _tables()
        }


def test_a_tenant_request_that_forgets_the_filter_sees_only_its_tenant():
    alpha, beta = two_tenants()
    response = client_for(make_api_key(alpha)).get("/forgetful", {"other": str(beta.pk)})
    assert response.status_code == 200, response.content
    seen = response.json()["seen"]
    assert set(seen) == set(_tables())
    for table, rows in seen.items():
        assert rows["tenants"] == [str(alpha.pk)], table  # raw SQL: alpha's rows only
        expected = tenant_models_by_table()[table].objects.filter(tenant_id=alpha.pk).count()
        assert rows["orm"] == expected, table  # Model.objects.all(): alpha's rows only
    # and PostgreSQL refused to write a row of beta's in alpha's scope
    assert response.json()["insertRefused"] == INSUFFICIENT_PRIVILEGE
    assert AnalyticsEvent.objects.filter(name="forged").count() == 0


def tenant_models_by_table():
    return {model._meta.db_table: model for model in tenant_models()}


def test_inserting_or_moving_a_row_into_another_tenant_is_refused():
    alpha, beta = two_tenants()
    with rls.tenant_scope(alpha.pk):
        with pytest.raises(DatabaseError) as refused, transaction.atomic():
            EventFactory(tenant=beta)
        assert refused.value.__cause__.sqlstate == INSUFFICIENT_PRIVILEGE
        mine = OutboxEvent.objects.first()
        with pytest.raises(DatabaseError), transaction.atomic():
            OutboxEvent.objects.filter(pk=mine.pk).update(tenant_id=beta.pk)
        # beta's rows cannot be changed or deleted: PostgreSQL does not even see them
        assert OutboxEvent.objects.filter(tenant_id=beta.pk).update(topic="x") == 0
        assert OutboxEvent.objects.filter(tenant_id=beta.pk).delete()[0] == 0
    assert OutboxEvent.objects.filter(tenant_id=beta.pk, topic="x").count() == 0
    assert OutboxEvent.objects.filter(tenant_id=beta.pk).count() == 2


def test_no_scope_leaks_to_the_next_request_on_the_same_connection():
    alpha, _beta = two_tenants()
    client = client_for(make_api_key(alpha))
    assert client.get("/forgetful").status_code == 200
    backend_pid = connection.connection.info.backend_pid
    response = client_for(None).get("/anonymous")
    assert connection.connection.info.backend_pid == backend_pid  # the same connection
    body = response.json()
    assert (body["role"], body["tenantId"], body["scope"]) == (rls.app_role(), "", "")
    assert all(rows == {"orm": 0, "tenants": []} for rows in body["seen"].values()), body


def test_a_rolled_back_scope_change_is_declared_again():
    """A rollback takes back session settings made inside it: the connection must not keep
    running with whatever scope was there before (another tenant's)."""
    alpha, beta = two_tenants()
    with rls.tenant_scope(beta.pk):
        assert {str(t) for t in OutboxEvent.objects.values_list("tenant_id", flat=True)} == {
            str(beta.pk)
        }
    with pytest.raises(ZeroDivisionError), transaction.atomic(), rls.tenant_scope(alpha.pk):
        OutboxEvent.objects.count()  # alpha's scope declared inside the transaction...
        raise ZeroDivisionError  # ...and rolled back: the database is back in beta's
    with rls.tenant_scope(alpha.pk):
        seen = {str(t) for t in OutboxEvent.objects.values_list("tenant_id", flat=True)}
    assert seen == {str(alpha.pk)}


def test_iterator_and_bulk_writes_run_in_the_scope():
    alpha, beta = two_tenants()
    with rls.tenant_scope(alpha.pk):
        ids = [e.tenant_id for e in OutboxEvent.objects.iterator(chunk_size=1)]
        with pytest.raises(DatabaseError), transaction.atomic():
            AnalyticsEvent.objects.bulk_create([EventFactory.build(tenant=beta)])
    assert {str(i) for i in ids} == {str(alpha.pk)}


def test_the_application_role_cannot_bypass_row_level_security():
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT current_user, r.rolsuper, r.rolbypassrls, "
            "  EXISTS (SELECT FROM pg_class c WHERE c.relowner = r.oid) "
            "FROM pg_roles r WHERE r.rolname = current_user"
        )
        role, superuser, bypass, owns_tables = cursor.fetchone()
    assert role == rls.system_role()  # tests run set-up as operators (tests/conftest.py)
    assert (superuser, bypass, owns_tables) == (False, False, False)
    tenant_id = "00000000-0000-0000-0000-000000000000"
    with rls.tenant_scope(tenant_id), connection.cursor() as cursor:
        cursor.execute(
            "SELECT current_user, rolsuper OR rolbypassrls FROM pg_roles "
            "WHERE rolname = current_user"
        )
        assert cursor.fetchone() == (rls.app_role(), False)


def test_the_tenant_policy_uses_the_tenant_id_index():
    with rls.tenant_scope("00000000-0000-0000-0000-000000000001"), connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        for table in ("assessments_analyticsevent", "outbox_delivery", "outbox_outboxevent"):
            cursor.execute(f"EXPLAIN SELECT * FROM {table}")
            plan = "\n".join(row[0] for row in cursor.fetchall())
            assert "Index Cond: (tenant_id = " in plan, plan


def test_a_system_scope_needs_a_reason():
    with pytest.raises(ValueError), rls.system_scope(""):
        pass


def events_seen_by_a_task() -> int:
    return OutboxEvent.objects.count()


def test_a_django_q_task_runs_in_a_system_scope_that_ends_with_it(settings):
    from django_q.tasks import async_task, result

    settings.Q_CLUSTER = {**settings.Q_CLUSTER, "sync": True}
    two_tenants()
    with rls.no_scope():
        assert OutboxEvent.objects.count() == 0
        task_id = async_task("tests.tenants.test_rls.events_seen_by_a_task", sync=True)
        assert OutboxEvent.objects.count() == 0  # the task's scope ended with it
        assert rls.current_scope() == rls.NO_SCOPE
    assert result(task_id) == 4  # two events of each tenant


def test_a_management_command_runs_in_a_system_scope(capsys):
    from django.core.management import call_command

    two_tenants()
    with rls.no_scope():
        call_command("outbox_stats", "--json")
    targets = json.loads(capsys.readouterr().out)["targets"]
    assert len(targets) == 2, targets  # each tenant's target: the command sees every tenant


def test_the_workers_raw_statements_run_in_the_declared_scope():
    """The delivery loop's statements use a raw psycopg cursor (outbox.delivery.claim.fetch_all):
    they must still run as the system role after tenant work on the same connection, and on a
    fresh connection (the worker reconnects after a database error)."""
    from outbox.delivery.claim import fetch_all

    who = "SELECT current_user::text, current_setting('atlas.scope', true)"
    alpha, _beta = two_tenants()
    with rls.tenant_scope(alpha.pk):
        assert OutboxEvent.objects.count() > 0  # the connection now runs as alpha
    with rls.system_scope("test: the worker"):
        assert fetch_all(who, {}) == [(rls.system_role(), rls.SYSTEM)]
    # a new session: the login role, nothing declared (init_connection_state after a reconnect)
    connection.connection.execute("RESET ROLE")
    connection.init_connection_state()
    with rls.system_scope("test: the worker, reconnected"):
        assert fetch_all(who, {}) == [(rls.system_role(), rls.SYSTEM)]


@pytest.mark.parametrize("command", ["makemigrations", "showmigrations"])
def test_migration_commands_run_as_the_owner_before_the_roles_exist(settings, command):
    """`make lint` runs makemigrations --check on a database that may never have been migrated
    (the roles are created by migrate): schema commands must not switch to the app roles."""
    from django.core.management import call_command

    settings.DATABASE_APP_ROLE = "atlas_not_created_yet"
    args = ["--check", "--dry-run"] if command == "makemigrations" else ["outbox"]
    call_command(command, *args, verbosity=0)
