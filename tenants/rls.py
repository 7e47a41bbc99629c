"""The second wall: the PostgreSQL row-level-security scope of the running code.

Every tenant-owned table refuses rows outside the scope the connection declared (policies in
each app's `00NN_row_level_security` migration, built by `tenants.rls_ddl`). A scope is one of:

- none (the default): no tenant row is visible or writable;
- `tenant_scope(tenant_id)`: that tenant's rows only (an API request, from the moment its key
  is authenticated: `enter_tenant_scope`, called by `tenants.auth` and nowhere else);
- `system_scope(reason)`: every tenant's rows, for work that is cross-tenant by design (the
  outbox worker, django-q2 tasks, staff in the admin, manage.py commands, the realtime hub,
  Stripe webhooks, /health, /metrics). Each declares it in one visible place.

The scope lives in a context variable; the database backend (`tenants.db`) brings the
connection in line with it lazily, in the same round trip as the next statement, and only
when it differs from what the connection already has (see `sync_prefix`). A tenant scope is
the application role with `atlas.tenant_id` set; the system scope is the system role with
`atlas.scope = 'system'`; no scope is the application role with neither. Neither role is a
superuser, a table owner or BYPASSRLS (`tenants.rls_ddl.ensure_roles`).
"""

from __future__ import annotations

import contextlib
import re
import threading
import uuid
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass

from django.conf import settings

TENANT_SETTING = "atlas.tenant_id"
SCOPE_SETTING = "atlas.scope"
SYSTEM = "system"
_ROLE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,50}$")


@dataclass(frozen=True)
class Scope:
    tenant_id: str = ""  # a UUID's text, or "" for none
    system_reason: str = ""  # why this code sees every tenant ("" when it does not)

    @property
    def is_system(self) -> bool:
        return bool(self.system_reason)


NO_SCOPE = Scope()
_scope: ContextVar[Scope] = ContextVar("atlas_rls_scope", default=NO_SCOPE)
# migrate/flush: the connection runs as its login role (the tables' owner), no scope at all
_owner: ContextVar[bool] = ContextVar("atlas_rls_owner", default=False)


def current_scope() -> Scope:
    return _scope.get()


def _tenant_text(tenant_id) -> str:
    # validated: the text is spliced into SQL as a literal (see sync_prefix)
    return str(uuid.UUID(str(getattr(tenant_id, "pk", tenant_id))))


@contextlib.contextmanager
def _scoped(scope: Scope) -> Iterator[Scope]:
    token = _scope.set(scope)
    try:
        yield scope
    finally:
        _scope.reset(token)


@contextlib.contextmanager
def tenant_scope(tenant_id) -> Iterator[Scope]:
    """Run the block with one tenant's rows only."""
    with _scoped(Scope(tenant_id=_tenant_text(tenant_id))) as scope:
        yield scope


@contextlib.contextmanager
def system_scope(reason: str) -> Iterator[Scope]:
    """Run the block with every tenant's rows: cross-tenant work, declared with a reason.
    Usable as a decorator too (`@system_scope("...")`)."""
    if not reason:
        raise ValueError("a system scope needs a reason")
    with _scoped(Scope(system_reason=reason)) as scope:
        yield scope


@contextlib.contextmanager
def no_scope() -> Iterator[Scope]:
    """Run the block with no scope (deny by default), whatever the caller declared."""
    with _scoped(NO_SCOPE) as scope:
        yield scope


def enter_tenant_scope(tenant_id) -> None:
    """For the one place that authenticates API keys: the rest of the request runs in the
    key's tenant scope. ScopeMiddleware restores the previous scope when the request ends."""
    _scope.set(Scope(tenant_id=_tenant_text(tenant_id)))


def enter_system_scope(reason: str) -> None:
    """For the one place that authenticates staff on the API (same lifetime as above)."""
    _scope.set(Scope(system_reason=reason))


INSUFFICIENT_PRIVILEGE = "42501"  # SQLSTATE of "violates row-level security policy"


@contextlib.contextmanager
def refusal_is_not_found(*, savepoint: bool = True) -> Iterator[None]:
    """PostgreSQL raises (rather than skips) when an upsert's ON CONFLICT meets another
    tenant's row: for the caller that row does not exist, so it is a 404 like any other id
    of another tenant. Inside a transaction the failed statement is rolled back to a
    savepoint, so the caller may go on; `savepoint=False` spares the two round trips when
    the caller's transaction ends on any error anyway."""
    from django.db import ProgrammingError, connection, transaction

    from core.errors import DomainError, ErrorKind

    needed = savepoint and connection.in_atomic_block
    try:
        with transaction.atomic() if needed else contextlib.nullcontext():
            yield
    except ProgrammingError as exc:
        if getattr(exc.__cause__, "sqlstate", None) != INSUFFICIENT_PRIVILEGE:
            raise
        raise DomainError("not_found", "No such object.", kind=ErrorKind.NOT_FOUND) from exc


# --- roles ----------------------------------------------------------------------------------


def app_role() -> str:
    """The role application code runs as (DATABASE_APP_ROLE); "" turns role switching off."""
    role = getattr(settings, "DATABASE_APP_ROLE", "")
    if role and not _ROLE_NAME.match(role):
        raise ValueError(f"DATABASE_APP_ROLE={role!r} is not a plain role name")
    return role


def system_role() -> str:
    return f"{app_role()}_system" if app_role() else ""


@contextlib.contextmanager
def owner_mode(connection) -> Iterator[None]:
    """Run as the login role (the tables' owner): migrations and flush only."""
    token = _owner.set(True)
    try:
        if connection.connection is not None:
            connection.connection.execute("RESET ROLE")
        connection.rls_applied = None
        yield
    finally:
        _owner.reset(token)
        connection.rls_applied = None  # the next statement re-declares role and scope


# --- bringing a connection in line with the scope -------------------------------------------


def desired_state() -> tuple[str, str, str] | None:
    """(role, tenant id, scope) the next statement must run with; None: leave it alone."""
    if _owner.get() or not app_role():
        return None
    scope = _scope.get()
    if scope.is_system:
        return (system_role(), "", SYSTEM)
    return (app_role(), scope.tenant_id, "tenant" if scope.tenant_id else "")


def state_sql(state: tuple[str, str, str]) -> str:
    """One statement setting role and scope, session-wide. The values are checked names and
    UUIDs, so they are written as literals: the statement can share a round trip with any
    query (no placeholders to renumber)."""
    role, tenant_id, scope = state
    return (
        f"SELECT set_config('role', '{role}', false), "
        f"set_config('{TENANT_SETTING}', '{tenant_id}', false), "
        f"set_config('{SCOPE_SETTING}', '{scope}', false)"
    )


def session_sql(scope: Scope) -> str:
    """For a connection opened outside the ORM (the realtime hub's): declare `scope` on it."""
    with _scoped(scope):
        state = desired_state()
    return state_sql(state) if state else "SELECT 1"


def sync_prefix(connection) -> tuple[str, tuple] | None:
    """The statement to run before the next query on `connection`, or None when the
    connection already runs with the current scope (the usual case: nothing is sent)."""
    state = desired_state()
    if state is None or getattr(connection, "rls_applied", None) == state:
        return None
    return state_sql(state), state


# --- where scopes are declared (one place each) ---------------------------------------------


class ScopeMiddleware:
    """First in MIDDLEWARE: every request starts with no scope and ends by restoring the
    previous one, so a scope never outlives its request on a reused connection. Staff in the
    admin work across tenants: system scope from the view on (process_view runs once the
    session's user is known)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        token = _scope.set(NO_SCOPE)
        try:
            return self.get_response(request)
        finally:
            _scope.reset(token)

    def process_view(self, request, view_func, view_args, view_kwargs):
        if request.path.startswith("/admin/") and _is_staff(request):
            enter_system_scope("staff in the admin")


def _is_staff(request) -> bool:
    user = getattr(request, "user", None)
    return bool(user is not None and user.is_active and user.is_staff)


# django-q2 runs each task between these two signals, in the worker process (or inline with
# sync=True): a task is system work, its scope ends with it.
_task_tokens = threading.local()


def _task_started(sender, task=None, **kwargs) -> None:
    stack = _task_tokens.__dict__.setdefault("stack", [])
    stack.append(_scope.set(Scope(system_reason=f"django-q2 task {task.get('name', '')}")))


def _task_finished(sender, task=None, **kwargs) -> None:
    stack = _task_tokens.__dict__.get("stack")
    if stack:
        _scope.reset(stack.pop())


# manage.py: every command is operator work (system scope); the schema commands run as the
# owner (migrate creates the application roles, so the others may run before they exist).
OWNER_COMMANDS = frozenset({"migrate", "flush", "makemigrations", "showmigrations", "sqlmigrate"})


def _scoped_execute(original):
    def execute(self, *args, **options):
        from django.db import connections

        name = type(self).__module__.rsplit(".", 1)[-1]
        with contextlib.ExitStack() as stack:
            stack.enter_context(system_scope(f"manage.py {name}"))
            if name in OWNER_COMMANDS:
                alias = options.get("database") or "default"
                stack.enter_context(owner_mode(connections[alias]))
            return original(self, *args, **options)

    execute.atlas_scoped = True
    return execute


def install() -> None:
    """Called once from TenantsConfig.ready()."""
    from django.core.management.base import BaseCommand
    from django_q.signals import post_execute_in_worker, pre_execute

    if not getattr(BaseCommand.execute, "atlas_scoped", False):
        BaseCommand.execute = _scoped_execute(BaseCommand.execute)  # type: ignore[method-assign]
    pre_execute.connect(_task_started, dispatch_uid="atlas_rls_task_started")
    post_execute_in_worker.connect(_task_finished, dispatch_uid="atlas_rls_task_finished")
