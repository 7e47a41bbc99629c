"""Django's PostgreSQL backend, bringing each connection in line with the RLS scope.

Before a statement runs, the connection gets the role and scope of the code running it
(`tenants.rls`): sent in the same round trip as the statement, and only when they changed,
so a request of the tenant the connection served last costs nothing extra.

The settings are session-wide (they survive the transaction, so a scope is declared once per
connection and tenant, not per transaction). A rollback takes back whatever was set inside
the rolled-back part, so after any rollback or failed statement the connection's state is
"unknown" and the next statement declares it again: a rollback can never leave the
connection in an older request's scope.
"""

from __future__ import annotations

import select

from django.db.backends.base.base import NO_DB_ALIAS
from django.db.backends.postgresql import base
from django.db.backends.utils import CursorWrapper
from psycopg import ClientCursor

from tenants import rls

# statements PostgreSQL refuses inside a transaction block (a two-statement round trip is one)
_ALONE = ("VACUUM", "CREATE DATABASE", "DROP DATABASE", "REINDEX", "ALTER SYSTEM")
# transaction control reads no rows, and must run in an aborted transaction: never prefixed
_CONTROL = ("SAVEPOINT", "RELEASE", "ROLLBACK", "COMMIT", "BEGIN", "START TRANSACTION")


def _touches_no_rows(sql) -> bool:
    return isinstance(sql, str) and sql.lstrip()[:20].upper().startswith(_CONTROL)


def _can_share_round_trip(cursor, sql) -> bool:
    # two statements in one execute need client-side binding (Django's default cursor);
    # composed SQL and named (server-side) cursors get the scope statement on its own
    if not isinstance(sql, str) or not isinstance(cursor, ClientCursor):
        return False
    if "CONCURRENTLY" in sql[:80].upper():
        return False
    return not sql.lstrip()[:20].upper().startswith(_ALONE)


class _ScopedCursorMixin:
    db: DatabaseWrapper
    cursor: object

    def _execute(self, sql, params, *ignored):
        pending = None if _touches_no_rows(sql) else self.db.rls_pending()
        if pending is None:
            return super()._execute(sql, params, *ignored)  # type: ignore[misc]
        statement, state = pending
        if not _can_share_round_trip(self.cursor, sql):
            self.db.rls_apply(statement, state)
            return super()._execute(sql, params, *ignored)  # type: ignore[misc]
        self.db.rls_applied = None
        result = super()._execute(f"{statement}; {sql}", params, *ignored)  # type: ignore[misc]
        self.cursor.nextset()  # type: ignore[attr-defined]  # back to the caller's statement
        self.db.rls_applied = state
        return result

    def _executemany(self, sql, param_list, *ignored):
        pending = self.db.rls_pending()
        if pending is not None:
            self.db.rls_apply(*pending)
        return super()._executemany(sql, param_list, *ignored)  # type: ignore[misc]


class ScopedCursorWrapper(_ScopedCursorMixin, CursorWrapper):
    pass


class ScopedCursorDebugWrapper(_ScopedCursorMixin, base.CursorDebugWrapper):
    pass


class DatabaseWrapper(base.DatabaseWrapper):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.rls_applied: tuple[str, str, str] | None = None

    def rls_pending(self):
        if self.alias == NO_DB_ALIAS:  # CREATE/DROP DATABASE for the tests: the login role
            return None
        return rls.sync_prefix(self)

    def rls_apply(self, statement: str, state) -> None:
        self.rls_applied = None
        with self.wrap_database_errors:
            self.connection.execute(statement)
        self.rls_applied = state

    def init_connection_state(self):
        super().init_connection_state()
        self.rls_applied = None  # a new session: its login role, no scope

    def _commit(self):
        try:
            return super()._commit()
        except Exception:
            self.rls_applied = None  # a failed commit is a rollback
            raise

    def _rollback(self):
        self.rls_applied = None
        return super()._rollback()

    def _savepoint_rollback(self, sid):
        self.rls_applied = None
        return super()._savepoint_rollback(sid)

    def is_usable(self):
        """Django's health check at the start of each request, without its SELECT 1 round trip
        on a healthy connection: one the server ended (a restart, pg_terminate_backend, an
        idle timeout) has its socket readable, with an error message or the end of the
        stream. Only then is it asked, as Django asks."""
        conn = self.connection
        if conn is None or conn.closed or conn.broken:
            return False
        try:
            readable, _, _ = select.select([conn.fileno()], [], [], 0)
        except (OSError, ValueError):
            return False
        return not readable or super().is_usable()

    def make_cursor(self, cursor):
        return ScopedCursorWrapper(cursor, self)

    def make_debug_cursor(self, cursor):
        return ScopedCursorDebugWrapper(cursor, self)
