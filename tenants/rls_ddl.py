"""Row-level security in the schema: the roles, their grants, and the per-table policies.

A table joins the second wall with one line in its app's migration:

    operations = [rls_ddl.enable_for("outbox_newtable")]

which makes PostgreSQL refuse, for that table, every row outside the connection's scope:
ENABLE + FORCE ROW LEVEL SECURITY (FORCE: the owner too), and two policies named after it:
- `<table>_tenant_rows`, for the application role: `tenant_id = atlas.tenant_id`. A plain
  equality with a per-statement constant, so the tenant_id indexes serve it;
- `<table>_system_rows`, for the system role: every row. The role is the scope: the backend
  switches to it only together with `atlas.scope = 'system'` (tenants.rls.desired_state).
  The policy is a plain `true` on purpose: a `current_setting(...) = 'system'` qual is a
  per-row filter to the planner, estimated at 0.5 % of the rows, which turned the admin's
  `ORDER BY seq DESC LIMIT n` pages into sequential scans (tests/ops/test_history_plans.py).
With no scope the tenant setting is empty, NULL never equals a tenant_id: no rows.
"""

from __future__ import annotations

from django.db import migrations

from tenants import rls

TENANT_PREDICATE = f"tenant_id = nullif(current_setting('{rls.TENANT_SETTING}', true), '')::uuid"
SYSTEM_PREDICATE = "true"

_CREATE_ROLE = """
DO $$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN
        CREATE ROLE {role} NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;  -- created meanwhile by a migration of another database on this server
END $$;
"""
_CHECK_ROLE = """
SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = %s
"""
# A login role that is not a superuser needs membership to SET ROLE (needs CREATEROLE).
_JOIN_ROLE = """
DO $$ BEGIN
    IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
       AND NOT pg_has_role(current_user, '{role}', 'MEMBER') THEN
        EXECUTE format('GRANT %I TO %I', '{role}', current_user);
    END IF;
END $$;
"""
_GRANTS = """
GRANT USAGE ON SCHEMA public TO {roles};
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {roles};
GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO {roles};
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {roles};
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO {roles};
"""


def ensure_roles(connection) -> None:
    """Create the application and system roles when missing, let the login role switch to
    them, and grant them the tables (idempotent; run by every migrate and flush)."""
    roles = [rls.app_role(), rls.system_role()]
    if not roles[0]:
        return
    with connection.cursor() as cursor:
        for role in roles:
            cursor.execute(_CREATE_ROLE.format(role=role))
            cursor.execute(_CHECK_ROLE, [role])
            if cursor.fetchone()[0]:
                raise RuntimeError(f"role {role} bypasses row-level security: refusing to use it")
            cursor.execute(_JOIN_ROLE.format(role=role))
        cursor.execute(_GRANTS.format(roles=", ".join(roles)))


def ensure_roles_after_migrate(sender, using="default", **kwargs) -> None:
    from django.db import connections

    ensure_roles(connections[using])


def policy_sql(table: str) -> list[str]:
    app, system = rls.app_role(), rls.system_role()
    tenant_policy, system_policy = f"{table}_tenant_rows", f"{table}_system_rows"
    return [
        f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY",
        f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY",
        f"DROP POLICY IF EXISTS {tenant_policy} ON {table}",
        f"CREATE POLICY {tenant_policy} ON {table} FOR ALL TO {app} "
        f"USING ({TENANT_PREDICATE}) WITH CHECK ({TENANT_PREDICATE})",
        f"COMMENT ON POLICY {tenant_policy} ON {table} IS "
        f"'A tenant-scoped connection reads and writes only its tenant''s rows (atlas.tenant_id).'",
        f"DROP POLICY IF EXISTS {system_policy} ON {table}",
        f"CREATE POLICY {system_policy} ON {table} FOR ALL TO {system} "
        f"USING ({SYSTEM_PREDICATE}) WITH CHECK ({SYSTEM_PREDICATE})",
        f"COMMENT ON POLICY {system_policy} ON {table} IS "
        f"'Cross-tenant work that declared a system scope (its own role) sees every row.'",
    ]


def disable_sql(table: str) -> list[str]:
    return [
        f"DROP POLICY IF EXISTS {table}_tenant_rows ON {table}",
        f"DROP POLICY IF EXISTS {table}_system_rows ON {table}",
        f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY",
        f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY",
    ]


class EnableRowLevelSecurity(migrations.operations.base.Operation):
    """Deny by default on one tenant-owned table (see the module docstring). The role names
    come from DATABASE_APP_ROLE when the migration runs, so they are not frozen in it."""

    reduces_to_sql = False
    reversible = True

    def __init__(self, table: str):
        self.table = table

    def state_forwards(self, app_label, state):
        pass  # no model state: policies live in the database only

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        ensure_roles(schema_editor.connection)
        for statement in policy_sql(self.table):
            schema_editor.execute(statement)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        for statement in disable_sql(self.table):
            schema_editor.execute(statement)

    def describe(self):
        return f"Row-level security (deny by default) on {self.table}"

    def deconstruct(self):
        return (self.__class__.__name__, [self.table], {})


def enable_for(table: str) -> EnableRowLevelSecurity:
    return EnableRowLevelSecurity(table)
