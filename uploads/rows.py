"""Attachment rows by hand-written SQL, for the statements every upload runs (creation, each
PATCH, finalising).

Building these statements with the ORM cost more Python than the database spent running them
(query compilation, 0.3-1 ms each). The SQL goes through Django's cursor: the row-level
security scope applies (tenants/db) and errors are Django's (IntegrityError for a taken id).
Tenant-owned reads name the tenant in their WHERE, as tenants.scoping would.
"""

from __future__ import annotations

from typing import Any

from django.db import connection

from uploads.models import Attachment

TABLE = Attachment._meta.db_table
_FIELDS = {field.attname: field for field in Attachment._meta.concrete_fields}
_ATTNAMES = list(_FIELDS)
# every column, in the order from_row expects
COLUMNS = ", ".join(f'"{field.column}"' for field in _FIELDS.values())
_INSERT_SQL = f"INSERT INTO {TABLE} ({COLUMNS}) VALUES ({', '.join(['%s'] * len(_FIELDS))})"


def from_row(values) -> Attachment:
    """The Attachment of a row selected with COLUMNS (as the ORM would load it)."""
    return Attachment.from_db(connection.alias, _ATTNAMES, values)


def _column(attname: str) -> str:
    return f'"{_FIELDS[attname].column}"'


def _db_value(attname: str, value: Any) -> Any:
    return _FIELDS[attname].get_db_prep_save(value, connection)


def insert(attachment: Attachment) -> None:
    """INSERT a new attachment, as `Attachment.objects.create` would (its auto_now times set)."""
    values = [
        field.get_db_prep_save(field.pre_save(attachment, True), connection)
        for field in _FIELDS.values()
    ]
    with connection.cursor() as cursor:
        cursor.execute(_INSERT_SQL, values)
    attachment._state.adding = False
    attachment._state.db = connection.alias


def update(attachment_id, *, where: dict[str, Any], **values: Any) -> int:
    """UPDATE the attachment's row when every `where` field has its value (never None); the
    number of rows changed (0 or 1)."""
    assignments = ", ".join(f"{_column(name)} = %s" for name in values)
    conditions = "".join(f" AND {_column(name)} = %s" for name in where)
    params = [_db_value(name, value) for name, value in values.items()]
    params.append(_db_value("id", attachment_id))
    params += [_db_value(name, value) for name, value in where.items()]
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {TABLE} SET {assignments} WHERE id = %s{conditions}", params)
        return cursor.rowcount
