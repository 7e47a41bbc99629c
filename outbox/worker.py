"""The long-running delivery loop behind `manage.py outbox_worker`.

Wakes on NOTIFY (a listener thread on its own connection) and polls as a fallback; survives
the database going away (reconnects with capped backoff); on SIGTERM finishes the batch in
flight, releases its leases and exits.
"""

from __future__ import annotations

import contextlib
import logging
import os
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
from outbox.models import Delivery, WorkerHeartbeat

logger = logging.getLogger("outbox.worker")
HEARTBEAT_SECONDS = 5.0
REPORT_SECONDS = 60.0
DB_ERRORS = (OperationalError, InterfaceError, DatabaseError)
REFUSED = (DataError, IntegrityError, ProgrammingError)


class Listener(threading.Thread):
    """LISTEN outbox_events on a dedicated autocommit connection; sets `wake` per NOTIFY."""

    def __init__(self, wake: threading.Event, stop: threading.Event):
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
        self.stop = threading.Event()
        self.wake = threading.Event()
        self.listener = Listener(self.wake, self.stop)
        self._last_beat = 0.0
        self._last_report, self._reported_total = time.monotonic(), 0

    def run(self, *, exit_when_idle: bool = False) -> None:
        """Pipelined: the next batch is claimed while the current one is on the wire, and the
        current one is recorded while the next one is; so the database never idles the HTTP."""
        self.listener.start()
        started = timezone.now()
        db_delay = 0.5
        inflight = None  # a batch whose sends are running
        unrecorded = None  # a batch with verdicts not yet written (e.g. the database was down)
        logger.info("outbox worker %s started", self.worker_id)
        try:
            while True:
                claimed = None
                try:
                    self._heartbeat(started)
                    if unrecorded:
                        self.deliverer.record(unrecorded)
                        unrecorded = None
                    # pre-claim only behind a full batch: when the queue is short an empty
                    # claim per event would just be one more query
                    busy = inflight is None or len(inflight.jobs) >= self.batch_size
                    if busy and not self.stop.is_set():
                        claimed = self.deliverer.claim(batch_size=self.batch_size)
                    if inflight:
                        unrecorded, inflight = self.deliverer.collect(inflight), None
                    if claimed and claimed.jobs:
                        inflight = self.deliverer.submit(claimed)
                    if unrecorded:
                        self.deliverer.record(unrecorded)
                        unrecorded = None
                    db_delay = 0.5
                except DB_ERRORS as exc:
                    if unrecorded and isinstance(exc, REFUSED):
                        # the database refused these verdicts (not a lost connection): retrying
                        # would stall this worker forever; their leases expire and they go again
                        logger.error("verdicts refused by the database, dropped: %s", exc)
                        self.deliverer.release(unrecorded)  # stop renewing: they lapse
                        unrecorded = None
                    if claimed is not None and claimed is not inflight:
                        self.deliverer.release(claimed)  # claimed, never sent: let it lapse
                    logger.warning("database error (%s); reconnecting in %.1fs", exc, db_delay)
                    close_old_connections()
                    connection.close()
                    if self.stop.is_set():
                        # at-least-once: unrecorded sends go again once their leases expire
                        logger.warning("stopping without recording the last verdicts")
                        break
                    self.stop.wait(db_delay)
                    db_delay = min(db_delay * 2, 10.0)
                    continue
                if inflight is not None or (claimed and len(claimed.jobs) >= self.batch_size):
                    continue  # overlap the next claim with these sends, or more is due
                if self.stop.is_set() or exit_when_idle:
                    break
                self.wake.wait(self.poll_seconds)
                self.wake.clear()
        finally:
            self.shutdown(started)

    def request_stop(self, *_):
        logger.info("outbox worker %s stopping after the batch in flight", self.worker_id)
        self.stop.set()
        self.wake.set()

    def shutdown(self, started):
        self.stop.set()
        self.deliverer.close()
        try:
            # nothing should be left leased (batches finish), but never strand a row
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
