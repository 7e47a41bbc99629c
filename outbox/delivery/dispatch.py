"""Hands claimed jobs to the send slots (delivery/senders.py), tenants taking turns.

A worker claims a little ahead of its free slots, so a freed sender never waits for a
database round trip: the jobs wait here, one queue per tenant. A sender that finishes a send
takes the next job itself, in round-robin order over the tenants, skipping a tenant that has
its limit on the wire: all but an eighth of the slots when it is alone, half of them while
another tenant competes (has jobs here or on the wire, or was active moments ago). So a
newcomer's job goes out next, not behind a backlog claimed earlier, and hanging sends of one
tenant never hold every slot.

One plain lock (the worker's thread puts, the send loop takes), held for a few dict
operations; an idle sender parks until a job is handed to it.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable
from queue import SimpleQueue
from typing import Protocol

from outbox.delivery.send import Job

STOP = object()  # handed to a sender: exit


class Inbox(Protocol):
    """Where a parked sender is handed its next item (senders._Handoff, or a queue)."""

    def put(self, item) -> None: ...


class Dispatch:
    def __init__(self, slots: int):
        self.share = max(1, slots // 2)
        self.solo = max(1, slots - slots // 8)
        self._lock = threading.Lock()
        self._waiting: dict[str, deque] = {}  # tenant -> its (job, sink) in claim order
        self._turns: deque[str] = deque()  # tenants with waiting jobs, in turn order
        self._on_wire: dict[str, int] = {}
        self._idle: list[Inbox] = []  # the inboxes of senders with nothing to do
        self._active: frozenset[str] = frozenset()
        self._stopped = False

    def put(self, jobs: Iterable[Job], sink: SimpleQueue) -> None:
        """Queue jobs (their results go to `sink`) and wake idle senders for what may go."""
        with self._lock:
            for job in jobs:
                queue = self._waiting.get(job.tenant_id)
                if queue is None:
                    queue = self._waiting[job.tenant_id] = deque()
                    self._turns.append(job.tenant_id)
                queue.append((job, sink))
            while self._idle and (item := self._pick()) is not None:
                self._idle.pop().put(item)

    def active_set(self, tenants: Iterable[str]) -> None:
        """Tenants the worker sent for moments ago: they compete even with nothing here."""
        self._active = frozenset(tenants)
        self.put((), SimpleQueue())  # a tenant's limit may have risen: wake idle senders

    def next(self, inbox: Inbox, finished: Job | None):
        """For a sender: note `finished` off the wire; the next job to send, or None (then
        the sender waits on `inbox`, where a job or STOP will be put)."""
        with self._lock:
            if finished is not None:
                left = self._on_wire.get(finished.tenant_id, 1) - 1
                if left > 0:
                    self._on_wire[finished.tenant_id] = left
                else:
                    self._on_wire.pop(finished.tenant_id, None)
            item = self._pick()
            if item is None:
                if self._stopped:
                    return STOP
                self._idle.append(inbox)
            return item

    def withdraw(self) -> list[Job]:
        """Take back every job not yet handed to a sender (a worker stopping: it releases
        their leases instead of sending them)."""
        with self._lock:
            jobs = [job for queue in self._waiting.values() for job, _sink in queue]
            self._waiting.clear()
            self._turns.clear()
            return jobs

    def stop(self) -> None:
        """Every idle sender exits; a busy one exits when nothing is left for it."""
        with self._lock:
            self._stopped = True
            self._waiting.clear()
            self._turns.clear()
            while self._idle:
                self._idle.pop().put(STOP)

    def _pick(self):
        for _ in range(len(self._turns)):
            tenant = self._turns.popleft()
            if self._on_wire.get(tenant, 0) >= self._limit(tenant):
                self._turns.append(tenant)  # at its limit: the next tenant's turn
                continue
            queue = self._waiting[tenant]
            item = queue.popleft()
            if queue:
                self._turns.append(tenant)
            else:
                del self._waiting[tenant]
            self._on_wire[tenant] = self._on_wire.get(tenant, 0) + 1
            return item
        return None

    def _limit(self, tenant: str) -> int:
        crowded = (
            any(other != tenant for other in self._waiting)
            or any(other != tenant for other in self._on_wire)
            or any(other != tenant for other in self._active)
        )
        return self.share if crowded else self.solo
