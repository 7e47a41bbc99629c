"""The long-running delivery loop behind `manage.py outbox_worker`: a continuous pipeline.

A fixed number of send slots (`OUTBOX_WORKER_CONCURRENCY`), fed from a few jobs claimed ahead
(delivery/dispatch.py: tenants take turns), so a slot freed is refilled at once; claims top
the buffer up as sends finish; finished sends are recorded in small groups as they come
(a few ms gathered), never behind the slowest send of a batch.
Wakes on NOTIFY (a listener thread on its own connection) and polls as a fallback; renews the
leases of everything on the wire; survives the database going away (reconnects with capped
backoff); on SIGTERM stops claiming, finishes and records what is on the wire, releases the
leases of what was claimed ahead (no attempt used) and exits.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import socket
import threading
import time
import uuid

from django.db import (
    DatabaseError,
    DataError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    ProgrammingError,
    close_old_connections,
    connection,
)
from django.utils import timezone

from outbox import conf
from outbox.delivery import Deliverer
from outbox.delivery.claim import Fairness
from outbox.delivery.send import Result
from outbox.models import Delivery, WorkerHeartbeat
from tenants import rls

logger = logging.getLogger("outbox.worker")
HEARTBEAT_SECONDS = 5.0
REPORT_SECONDS = 60.0
DB_ERRORS = (OperationalError, InterfaceError, DatabaseError)
REFUSED = (DataError, IntegrityError, ProgrammingError)
# A finished send waits at most this long for others to share its record statement (and the
# claim that refills the slots right after it): a few ms of latency for far fewer statements.
GATHER_SECONDS = 0.005
# A tenant claimed for this recently still competes for the slots (see claim.Fairness): a
# steady publisher keeps its share even in the gaps between its events.
ACTIVE_SECONDS = 10.0
# After a claim that found nothing, a NOTIFY waits this long before the next claim (a freed
# slot or the poll claim at once): when a hot target sits at its cap, every publish would
# otherwise cost a claim that finds nothing while the verdicts that free the cap wait behind
# it (200 events/s to one target: lag p99 over 1 s instead of tens of ms).
WAKE_BACKOFF_SECONDS = 0.01
WAKE = "wake"


class Wake:
    """Event-like for the listener: `set()` puts a wake-up in the worker's inbox, next to the
    finished sends, so one blocking `get` waits for both."""

    def __init__(self, inbox: queue.SimpleQueue):
        self.inbox = inbox

    def set(self) -> None:
        self.inbox.put(WAKE)


class Listener(threading.Thread):
    """LISTEN outbox_events on a dedicated autocommit connection; wakes the worker per NOTIFY."""

    def __init__(self, wake: Wake, stop: threading.Event):
        super().__init__(name="outbox-listen", daemon=True)
        self.wake, self.stop = wake, stop
        self.connected = threading.Event()

    def run(self):
        delay = 0.5
        while not self.stop.is_set():
            conn = None
            try:
                conn = connection.get_new_connection(connection.get_connection_params())
                conn.autocommit = True
                conn.execute(f"LISTEN {conf.CHANNEL_EVENTS}")
                self.connected.set()
                delay = 0.5
                self.wake.set()  # anything committed while we were away
                while not self.stop.is_set():
                    for _ in conn.notifies(timeout=1.0, stop_after=1):
                        self.wake.set()
            except Exception as exc:  # the database restarting: reconnect, never crash
                self.connected.clear()
                logger.warning("listener lost its connection (%s); retrying in %.1fs", exc, delay)
                self.stop.wait(delay)
                delay = min(delay * 2, 10.0)
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()


class Worker:
    def __init__(self, *, concurrency=None, batch_size=None, poll_seconds=None, worker_id=None):
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.batch_size = batch_size or conf.get("OUTBOX_BATCH_SIZE")
        self.poll_seconds = poll_seconds or conf.get("OUTBOX_POLL_SECONDS")
        self.deliverer = Deliverer(concurrency=concurrency, worker_id=self.worker_id)
        self.slots = self.deliverer.concurrency
        # claimed ahead of the free slots, so a freed sender never waits for the database
        self.ahead = self.slots
        self.group = max(1, self.slots // 4)  # sends per claim / record, unless time is up
        self.stop = threading.Event()
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()  # finished sends and wake-ups
        self.wake = Wake(self.inbox)
        self.listener = Listener(self.wake, self.stop)
        self._last_beat = 0.0
        self._last_report, self._reported_total = time.monotonic(), 0
        # the pipeline's state (all on this thread)
        self.sending = 0  # jobs handed to the send slots (waiting or on the wire)
        self.in_flight: dict[str, int] = {}  # tenant -> its jobs handed to the senders
        self.active: dict[str, float] = {}  # tenant -> when it was last claimed for
        self.finished: list[Result] = []  # sent, not yet recorded
        self._finished_since = 0.0
        self._woken = True  # claim at once on start
        self._freed = False  # a slot freed since the last claim
        self._found_nothing = False  # the last claim came back empty
        self._claimed_at = 0.0  # when the last claim ran
        self._next_poll = 0.0
        self._next_renewal = 0.0
        self._db_delay, self._db_retry_at = 0.5, 0.0
        self._withdrawn = False

    @rls.system_scope("outbox worker")  # delivers every tenant's events
    def run(self, *, exit_when_idle: bool = False) -> None:
        self.listener.start()
        started = timezone.now()
        logger.info("outbox worker %s started", self.worker_id)
        try:
            while True:
                now = time.monotonic()
                if now >= self._db_retry_at:
                    try:
                        self._heartbeat(started)
                        self._record_due(now)
                        self._claim_due(now)
                        self._renew_due(now)
                        self._db_delay = 0.5
                    except DB_ERRORS as exc:
                        self._db_failed(exc, now)
                if self.stop.is_set() and not self._withdrawn:
                    self._withdraw()
                if self._done(exit_when_idle):
                    break
                self._wait()
        finally:
            self.shutdown(started)

    # --- the loop's steps ----------------------------------------------------------------------

    def _record_due(self, now: float) -> None:
        """Record the finished sends once a group is full, or a few ms old, or when few sends
        are left on the wire (nothing to gather: their targets wait for these leases), or
        when stopping."""
        if not self.finished:
            return
        if not (
            len(self.finished) >= self.group
            or self.sending < self.group
            or now - self._finished_since >= GATHER_SECONDS
            or self.stop.is_set()
        ):
            return
        results, self.finished = self.finished, []
        try:
            self.deliverer.record_results(results)
        except REFUSED as exc:
            # the database refused these verdicts (not a lost connection): retrying would
            # stall this worker forever; their leases lapse and they go again
            logger.error("verdicts refused by the database, dropped: %s", exc)
            self.deliverer.forget(results)
        except DB_ERRORS:
            self.finished = results + self.finished  # kept for the retry
            raise

    def _claim_due(self, now: float) -> None:
        """Claim up to the free slots: at once after a NOTIFY, right after the sends that
        freed slots are recorded, and at every poll."""
        free = self.slots + self.ahead - self.sending
        if self.stop.is_set() or free <= 0 or self.finished:
            return  # finished sends still hold their leases (target caps): record them first
        if not (self._woken or self._freed or now >= self._next_poll):
            return
        if self._woken_too_soon(now):
            return  # the wake-up stays: _wait comes back when the backoff is over
        limit = min(free, self.batch_size)
        active = [t for t, seen in self.active.items() if now - seen < ACTIVE_SECONDS]
        self.deliverer.dispatch.active_set(active)
        fairness = Fairness(slots=self.slots, held=self.in_flight, active=active, ahead=self.ahead)
        self._woken = self._freed = False
        self._next_poll = now + self.poll_seconds
        self._claimed_at = now
        batch = self.deliverer.claim(batch_size=limit, fairness=fairness)
        self._found_nothing = not batch.jobs
        if not batch.jobs:
            return
        self.deliverer.submit(batch, sink=self.inbox)
        for job in batch.jobs:
            if job.defer_seconds is None:
                self.in_flight[job.tenant_id] = self.in_flight.get(job.tenant_id, 0) + 1
            self.active[job.tenant_id] = now
        self.sending += batch.sent
        if batch.results:  # handed back by the rate limit at once
            self._finished_add(batch.results, now)

    def _woken_too_soon(self, now: float) -> bool:
        """Only a NOTIFY, moments after a claim that found nothing: wait for the backoff."""
        return (
            self._found_nothing
            and not self._freed
            and now < self._next_poll
            and now - self._claimed_at < WAKE_BACKOFF_SECONDS
        )

    def _withdraw(self) -> None:
        """Stopping: jobs claimed ahead and not yet sent are not sent; their leases are
        released at shutdown (no attempt used), only what is on the wire finishes."""
        self._withdrawn = True
        for job in self.deliverer.dispatch.withdraw():
            self.sending -= 1
            self._untrack(job.tenant_id)
            self.deliverer.held.pop(job.delivery_id, None)

    def _untrack(self, tenant: str) -> None:
        left = self.in_flight.get(tenant, 1) - 1
        if left > 0:
            self.in_flight[tenant] = left
        else:
            self.in_flight.pop(tenant, None)

    def _renew_due(self, now: float) -> None:
        """Renew every held lease each third of a lease, by elapsed time: neither one slow
        receiver nor many short sends in waves may let a lease lapse mid-send."""
        if now < self._next_renewal:
            return
        self._next_renewal = now + max(conf.get("OUTBOX_LEASE_SECONDS") / 3, 0.1)
        self.deliverer.renew_leases()

    def _wait(self) -> None:
        """Block until a send finishes, a NOTIFY comes, or the next timed step is due; then
        take everything else already there."""
        now = time.monotonic()
        if now < self._db_retry_at:  # the database is away: only sends can finish meanwhile
            deadlines = [self._db_retry_at]
        else:
            deadlines = [self._last_beat + HEARTBEAT_SECONDS]
            if self.finished:
                deadlines.append(self._finished_since + GATHER_SECONDS)
            if not self.stop.is_set():
                deadlines.append(self._next_poll)
                if self._woken:  # a wake-up held back by the backoff
                    deadlines.append(self._claimed_at + WAKE_BACKOFF_SECONDS)
            if self.deliverer.held:
                deadlines.append(self._next_renewal)
        timeout = max(0.0, min(deadlines) - now)
        try:
            item = self.inbox.get(timeout=timeout) if timeout else self.inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            self._take(item)
            try:
                item = self.inbox.get_nowait()
            except queue.Empty:
                return

    def _take(self, item) -> None:
        if item is WAKE:
            self._woken = True
            return
        now = time.monotonic()
        self.sending -= 1
        self._untrack(item.job.tenant_id)
        self._freed = True
        self._finished_add([item], now)

    def _finished_add(self, results: list[Result], now: float) -> None:
        if not self.finished:
            self._finished_since = now
        self.finished += results

    def _done(self, exit_when_idle: bool) -> bool:
        if self.sending or (self.finished and time.monotonic() >= self._db_retry_at):
            return False  # sends on the wire, or verdicts to write while we can
        if self.finished:  # the database is away and nothing is on the wire
            if self.stop.is_set():
                # at-least-once: unrecorded sends go again once their leases expire
                logger.warning("stopping without recording the last verdicts")
                return True
            return False
        if self.stop.is_set():
            return True
        return exit_when_idle and self._found_nothing and not self._woken

    def _db_failed(self, exc: Exception, now: float) -> None:
        logger.warning("database error (%s); reconnecting in %.1fs", exc, self._db_delay)
        close_old_connections()
        connection.close()
        self._db_retry_at = now + self._db_delay
        self._db_delay = min(self._db_delay * 2, 10.0)

    # --- start, stop, heartbeat ----------------------------------------------------------------

    def request_stop(self, *_):
        logger.info("outbox worker %s stopping after the sends in flight", self.worker_id)
        self.stop.set()
        self.wake.set()

    def shutdown(self, started):
        self.stop.set()
        self.deliverer.close()
        try:
            # nothing should be left leased (in-flight sends finish), but never strand a row
            Delivery.objects.filter(locked_by__startswith=f"{self.worker_id}:").update(
                locked_until=None, locked_by=""
            )
            WorkerHeartbeat.objects.filter(pk=self.worker_id).update(
                stopped_at=timezone.now(), last_seen_at=timezone.now()
            )
        except DB_ERRORS as exc:
            logger.warning("could not release leases at exit (%s): they expire on their own", exc)
        logger.info(
            "outbox worker %s stopped (%s delivered)",
            self.worker_id,
            self.deliverer.delivered_total,
        )

    def _heartbeat(self, started):
        if time.monotonic() - self._last_beat < HEARTBEAT_SECONDS:
            return
        now = timezone.now()
        WorkerHeartbeat.objects.update_or_create(
            pk=self.worker_id,
            defaults={"last_seen_at": now, "delivered": self.deliverer.delivered_total},
            create_defaults={
                "started_at": started,
                "last_seen_at": now,
                "delivered": self.deliverer.delivered_total,
            },
        )
        self._last_beat = time.monotonic()
        if self._last_beat - self._last_report >= REPORT_SECONDS:  # progress for operators
            delivered = self.deliverer.delivered_total
            logger.info(
                "outbox worker %s: %s delivered in the last %.0fs (%s in total)",
                self.worker_id,
                delivered - self._reported_total,
                self._last_beat - self._last_report,
                delivered,
            )
            self._last_report, self._reported_total = self._last_beat, delivered
