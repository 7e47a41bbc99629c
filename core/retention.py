"""Pruning history in bounded batches, oldest first, along a primary key or sequence.

Each batch is one short statement (its own transaction): it reads the next `batch_size`
rows after the last key seen, deletes those that are expired and allowed to go, and returns
(last key of the batch, rows deleted, whether every row of the batch is newer than the
cutoff).
No batch holds a lock for longer than its own few thousand rows, so the worker and the API
keep writing while a prune runs; rows that must stay (open, dead, cancelled) are stepped over,
never re-read within one run.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from django.db import connection


def expired_rows_sql(table: str, column: str) -> str:
    """The batch statement for a table whose rows all go once `column` is older than the
    cutoff (no row is kept for its state): keyset_prune's contract, by primary key."""
    return f"""
WITH batch AS (
    SELECT id, {column} FROM {table}
    WHERE id > %(after)s ORDER BY id LIMIT %(limit)s
), gone AS (
    DELETE FROM {table} t USING batch b
    WHERE t.id = b.id AND b.{column} < %(cutoff)s RETURNING 1
)
SELECT (SELECT max(id) FROM batch), (SELECT count(*) FROM gone),
       coalesce((SELECT bool_and({column} >= %(cutoff)s) FROM batch), false)
"""


def keyset_prune(
    sql: str,
    params: dict,
    *,
    batch_size: int,
    progress: Callable[[int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    pause_seconds: float = 0.0,
) -> int:
    """Run `sql` batch after batch; it takes %(after)s and %(limit)s besides `params` and
    returns one row (last_key, deleted, all_newer): the run ends at the first batch made only
    of rows newer than the cutoff (keys follow insert time; a few rows out of order near the
    cutoff wait for the next run). Returns the number of rows deleted."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    after, total = -1, 0
    while True:
        with connection.cursor() as cursor:
            cursor.execute(sql, {**params, "after": after, "limit": batch_size})
            last_key, deleted, all_newer = cursor.fetchone()
        if last_key is None:  # nothing after `after`: the table's end
            return total
        after, total = last_key, total + deleted
        if progress:
            progress(total)
        if all_newer or (should_stop and should_stop()):
            return total
        if pause_seconds:
            time.sleep(pause_seconds)  # leave room for the worker on a busy database
