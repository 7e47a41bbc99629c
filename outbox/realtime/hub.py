"""The realtime hub: one per ASGI process, shared by every open SSE stream.

One LISTEN connection wakes it on each publish commit (and on realtime-target broadcasts); it
then reads the new events once, in `seq` order, and hands each to the streams of its tenant.
Hundreds of streams cost hundreds of small queues, not hundreds of connections or threads.

Gaps: `seq` comes from a sequence, so a transaction that took a seq before a neighbour but
commits after it leaves a hole for a while, and a rollback leaves one for good. The hub never
guesses which: when it meets a hole it notes the transactions in progress at that moment
(the hole's owner is one of them: a publish takes its transaction id before its seq) and
waits until every one of them has ended; then the hole is either filled or was a rollback.
So streams, and the Last-Event-ID cursor they give out, never skip a committed event.
OUTBOX_REALTIME_SETTLE_SECONDS is only a safety valve against a transaction left open for
very long (logged when it fires).

Keys: the same LISTEN connection hears tenants' key changes (a revoke or a tenant's
deactivation, NOTIFY at its commit) and ends every open stream of that key or tenant at once.
Announcements sent while the connection was down are lost, so after a reconnect every stream
re-checks its key (each stream also re-checks at every keep-alive).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg
from django.db import connection

from outbox import conf
from outbox.realtime import event_ids
from tenants import rls
from tenants.keycache import KEY_CHANGES_CHANNEL

logger = logging.getLogger("outbox.realtime")
QUEUE_SIZE = 1000
START_WAIT_SECONDS = 5.0

# System-level read (all tenants): the hub routes each row to its tenant's streams.
_FETCH_SQL = """
SELECT seq, tenant_id::text, id::text, topic, event_type, payload::text, occurred_at
FROM outbox_outboxevent WHERE seq > %s ORDER BY seq LIMIT 1000
"""


def event_message(seq, tenant_id, event_id, topic, event_type, payload_text, occurred_at) -> dict:
    occurred = occurred_at.isoformat().replace("+00:00", "Z")
    return {
        "seq": seq,
        "event_id": event_ids.encode(seq),  # the SSE id: opaque outside this server
        "tenant_id": str(tenant_id),
        "topic": topic,
        "event_type": event_type,
        "data": (
            f'{{"id":"{event_id}","topic":{json.dumps(topic)},'
            f'"eventType":{json.dumps(event_type)},"payload":{payload_text},'
            f'"tenantId":"{tenant_id}","occurredAt":"{occurred}"}}'
        ),
    }


@dataclass(eq=False)
class Subscriber:
    tenant_id: str
    topics: frozenset[str]
    key_id: str = ""
    queue: asyncio.Queue = field(default_factory=lambda: asyncio.Queue(QUEUE_SIZE))
    overflowed: bool = False
    closed: bool = False  # its key was revoked or its tenant deactivated
    recheck_due: bool = False  # key announcements may have been missed: check the key now
    # a realtime token's narrower view (event types, one session): anything with .matches()
    scope: Any = None

    def nudge(self):
        """Wake the stream if it waits on an empty queue (a full one is read at once)."""
        with contextlib.suppress(asyncio.QueueFull):
            self.queue.put_nowait(None)

    def wants(self, message: dict) -> bool:
        return (
            message["tenant_id"] == self.tenant_id
            and (not self.topics or message["topic"] in self.topics)
            and (self.scope is None or self.scope.matches(message))
        )


@dataclass
class Hole:
    """The first missing seq after the cursor and the transactions running when it was seen."""

    seq: int
    xids: list[str]
    since: float = field(default_factory=time.monotonic)

    def age(self) -> float:
        return time.monotonic() - self.since


class Hub:
    def __init__(self):
        self.subscribers: set[Subscriber] = set()
        self.cursor: int | None = None
        self.wake = asyncio.Event()
        self.ready = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._hole: Hole | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    def ensure_running(self):
        if not self._tasks or any(t.done() for t in self._tasks):
            for task in self._tasks:
                task.cancel()
            self._tasks = [asyncio.create_task(self._listen()), asyncio.create_task(self._pump())]

    @staticmethod
    async def _connect() -> psycopg.AsyncConnection:
        params = connection.get_connection_params()
        for key in ("cursor_factory", "context"):
            params.pop(key, None)
        conn = await psycopg.AsyncConnection.connect(**params, autocommit=True)
        # its own connection, outside the ORM: the hub routes every tenant's events
        await conn.execute(rls.session_sql(rls.Scope(system_reason="realtime hub")))
        return conn

    async def _listen(self):
        delay = 0.5
        listened_before = False
        while True:
            try:
                conn = await self._connect()
                async with conn:
                    await conn.execute(f"LISTEN {conf.CHANNEL_EVENTS}")
                    await conn.execute(f"LISTEN {conf.CHANNEL_REALTIME}")
                    await conn.execute(f"LISTEN {KEY_CHANGES_CHANNEL}")
                    delay = 0.5
                    if listened_before:
                        self._recheck_all()
                    listened_before = True
                    self.wake.set()
                    async for notify in conn.notifies():
                        if notify.channel == KEY_CHANGES_CHANNEL:
                            self._end_streams_of(notify.payload)
                        else:
                            self.wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # database restart: reconnect, streams keep waiting
                logger.warning("realtime listener lost its connection (%s)", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def _pump(self):
        conn = None
        while True:
            try:
                if conn is None or conn.closed:
                    conn = await self._connect()
                if self.cursor is None:
                    self.cursor = await self._start_cursor(conn)
                    self.ready.set()
                waiting = await self._fetch_and_dispatch(conn)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("realtime hub query failed (%s); retrying", exc)
                conn = None
                await asyncio.sleep(1.0)
                continue
            # a hole waiting to settle: look again soon; otherwise sleep until NOTIFY (or 1 s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), 0.05 if waiting else 1.0)
            self.wake.clear()

    @staticmethod
    async def _in_progress(conn) -> list[str]:
        """Transaction ids running now (a statement of its own: its snapshot is taken now)."""
        cur = await conn.execute("SELECT pg_snapshot_xip(pg_current_snapshot())::text")
        return [row[0] for row in await cur.fetchall()]

    @staticmethod
    async def _ended(conn, xids: list[str]) -> bool:
        if not xids:
            return True
        cur = await conn.execute(
            "SELECT NOT EXISTS (SELECT 1 FROM unnest(%s::text[]) x"
            " WHERE pg_xact_status(x::xid8) = 'in progress')",
            [xids],
        )
        return (await cur.fetchone())[0]

    async def _filled(self, conn) -> bool:
        cur = await conn.execute(
            "SELECT EXISTS (SELECT 1 FROM outbox_outboxevent WHERE seq = %s)", [self._hole.seq]
        )
        return (await cur.fetchone())[0]

    async def _start_cursor(self, conn) -> int:
        """The sequence's last value, once every transaction that may hold a seq up to it has
        ended: from there on everything below the cursor is final (stored or rolled back)."""
        cur = await conn.execute(
            "SELECT GREATEST(COALESCE((SELECT max(seq) FROM outbox_outboxevent), 0),"
            " (SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM outbox_event_seq))"
        )
        value = (await cur.fetchone())[0]
        running = await self._in_progress(conn)  # after the read: includes every holder
        # streams cannot connect until this returns: wait less than the hole valve
        wait = min(START_WAIT_SECONDS, conf.get("OUTBOX_REALTIME_SETTLE_SECONDS"))
        deadline = time.monotonic() + wait
        while not await self._ended(conn, running):
            if time.monotonic() >= deadline:
                logger.warning("realtime: starting while transactions %s still run", running)
                break
            await asyncio.sleep(0.05)
        return value

    async def _fetch_and_dispatch(self, conn) -> bool:
        """Dispatch rows in seq order; stop at a hole whose transactions have not all ended."""
        while True:
            # checked before the fetch: if they had all ended by now, the fetch is final
            hole = self._hole
            settled = hole is not None and await self._ended(conn, hole.xids)
            valve = conf.get("OUTBOX_REALTIME_SETTLE_SECONDS")
            waiting = hole is not None and not settled and hole.age() < valve
            if waiting and not await self._filled(conn):
                return True  # still open: no need to read everything queued behind it
            cur = await conn.execute(_FETCH_SQL, [self.cursor])
            rows = await cur.fetchall()
            if not rows:
                return False
            for row in rows:
                if row[0] != self.cursor + 1:
                    hole = self._hole
                    if hole is None or hole.seq != self.cursor + 1:
                        self._hole = Hole(self.cursor + 1, await self._in_progress(conn))
                        return True
                    if not settled:
                        if hole.age() < conf.get("OUTBOX_REALTIME_SETTLE_SECONDS"):
                            return True
                        logger.warning(
                            "realtime: seq %s-%s still not committed after %.0f s; streaming on",
                            hole.seq,
                            row[0] - 1,
                            hole.age(),
                        )
                self._hole = None
                self.cursor = row[0]
                self._dispatch(event_message(*row))
            if len(rows) < 1000:
                return False

    def _dispatch(self, message: dict):
        for sub in list(self.subscribers):
            if sub.wants(message):
                try:
                    sub.queue.put_nowait(message)
                except asyncio.QueueFull:
                    # a slow reader: end its stream; it resumes from Last-Event-ID, no gap
                    sub.overflowed = True
                    self.subscribers.discard(sub)

    # --- keys ---------------------------------------------------------------------------------

    def _end_streams_of(self, payload: str):
        """A key was revoked (keyId) or a tenant deactivated (keyId null): end its streams."""
        try:
            change = json.loads(payload)
            tenant_id, key_id = str(change["tenantId"]), change.get("keyId")
        except (ValueError, KeyError, TypeError):
            logger.warning("realtime: unreadable key change %r; re-checking every key", payload)
            self._recheck_all()
            return
        for sub in list(self.subscribers):
            if sub.tenant_id == tenant_id and (key_id is None or sub.key_id == str(key_id)):
                sub.closed = True
                self.subscribers.discard(sub)
                sub.nudge()

    def _recheck_all(self):
        for sub in list(self.subscribers):
            sub.recheck_due = True
            sub.nudge()

    # --- streams -----------------------------------------------------------------------------

    async def subscribe(
        self, tenant_id: str, topics: frozenset[str], key_id: str = "", scope: Any = None
    ) -> tuple[Subscriber, int]:
        """Register a stream; returns it and the cursor from which live messages start."""
        self.ensure_running()
        await self.ready.wait()
        sub = Subscriber(tenant_id, topics, key_id, scope=scope)
        self.subscribers.add(sub)  # no await between: cursor and subscription agree
        return sub, self.cursor

    def unsubscribe(self, sub: Subscriber):
        self.subscribers.discard(sub)


_hubs: dict[int, Hub] = {}


def hub() -> Hub:
    """The hub of the running event loop (one per ASGI process)."""
    loop = asyncio.get_running_loop()
    if id(loop) not in _hubs:
        _hubs[id(loop)] = Hub()
    return _hubs[id(loop)]
