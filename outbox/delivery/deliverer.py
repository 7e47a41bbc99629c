"""Claim due rows (SKIP LOCKED + lease, shared fairly), send them from a fixed number of send
slots (coroutines on one event loop thread, delivery/senders.py), record the verdicts.

Two ways to drive it:
- the worker's continuous pipeline (`outbox/worker.py`): claims into free send slots as they
  free, and records finished sends in small groups (`claim_into`, `record_results`);
- rounds (`run_once`: claim, send, wait for all, record), for the django-q2 sweep and tests.
The send slots never touch the database; every statement runs on the caller's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime

from django.db import Error as DjangoDbError
from django.db import transaction
from django.utils import timezone

from outbox import conf, operator_events
from outbox.delivery import breaker, ratelimit
from outbox.delivery.claim import Fairness, deliveries_claim, leases_renew
from outbox.delivery.client import Client
from outbox.delivery.dispatch import Dispatch
from outbox.delivery.record import goes_dead, verdict_log, verdicts_record
from outbox.delivery.send import Job, Result, send
from outbox.delivery.senders import Senders
from outbox.models import Target

logger = logging.getLogger("outbox.delivery")

PROBE_CHECK_SECONDS = 1.0
_REALTIME = Target.Kind.REALTIME.value  # read once: compared per delivery


@dataclass
class Batch:
    """Deliveries claimed under one lease token, then their verdicts."""

    token: str
    jobs: list[Job]
    results: list[Result] = field(default_factory=list)
    recorded: bool = False
    sink: queue.SimpleQueue | None = None  # where its sends report (a round's own queue)
    sent: int = 0  # jobs handed to the send slots (the rest were deferred at once)


class Deliverer:
    """Holds the send slots (with their keep-alive connections per target) and the leases
    it holds."""

    def __init__(self, *, concurrency: int | None = None, worker_id: str | None = None):
        self.concurrency = concurrency or conf.get("OUTBOX_WORKER_CONCURRENCY")
        self.worker_id = worker_id or f"adhoc-{uuid.uuid4().hex[:8]}"
        self.dispatch = Dispatch(self.concurrency)  # claimed jobs, waiting for a slot
        self.senders = Senders(self.dispatch, self.concurrency, self._send)
        self.delivered_total = 0
        # delivery id -> lease token, for every delivery claimed and not yet recorded
        self.held: dict[int, str] = {}
        self._next_probe_check = 0.0

    def close(self) -> None:
        """Let the send slots finish what they were given, then stop them."""
        self.dispatch.stop()
        self.senders.close()

    # --- claiming ----------------------------------------------------------------------------

    def claim(
        self,
        *,
        batch_size: int | None = None,
        fairness: Fairness | None = None,
        probes: bool = True,
    ) -> Batch:
        """Lease up to `batch_size` due deliveries (plus any half-open probe this deliverer
        takes), shared by `fairness` (a round's: its batch is its slots)."""
        batch_size = batch_size or conf.get("OUTBOX_BATCH_SIZE")
        lease = conf.get("OUTBOX_LEASE_SECONDS")
        token = f"{self.worker_id}:{uuid.uuid4().hex[:8]}"
        now = timezone.now()
        jobs = self._probes(now, token, lease) if probes else []
        jobs += self._claim(
            now, token, lease, batch_size, Target.Circuit.CLOSED, None, fairness=fairness
        )
        for job in jobs:
            self.held[job.delivery_id] = token
        return Batch(token, jobs)

    def _probes(self, now: datetime, token: str, lease: float) -> list[Job]:
        """Half-open targets: this worker may own the one probe (checked once a second)."""
        if time.monotonic() < self._next_probe_check:
            return []
        self._next_probe_check = time.monotonic() + PROBE_CHECK_SECONDS
        jobs = []
        for target_id in breaker.probes_take(now=now, lease_seconds=lease):
            probe = self._claim(now, token, lease, 1, Target.Circuit.HALF_OPEN, target_id)
            if not probe:
                breaker.probe_release(target_id=target_id)
            for job in probe:
                job.probe = True
            jobs += probe
        return jobs

    def _claim(
        self, now, token, lease, limit, circuit_state, target_id, *, fairness=None
    ) -> list[Job]:
        return deliveries_claim(
            now=now,
            token=token,
            lease_seconds=lease,
            limit=limit,
            circuit_state=circuit_state,
            target_id=target_id,
            target_cap=conf.get("OUTBOX_TARGET_MAX_IN_FLIGHT"),
            fairness=fairness or Fairness(slots=limit),
        )

    # --- sending -----------------------------------------------------------------------------

    def submit(self, batch: Batch, sink: queue.SimpleQueue | None = None) -> Batch:
        """Hand the batch to the send slots; each finished send's Result goes to `sink`
        (a queue of the batch's own by default). Rate-limit slots are reserved here, just
        before the sends: jobs without a slot within the horizon are handed back at once
        (their Result is in `batch.results` already; no sender is used)."""
        batch.sink = sink or queue.SimpleQueue()
        ratelimit.slots_reserve(batch.jobs)
        self.senders.start()
        sending = []
        for job in batch.jobs:
            if job.defer_seconds is not None:  # no slot within the horizon: hand it back
                batch.results.append(
                    Result(job, "deferred", retry_after=job.defer_seconds, sent=False)
                )
            else:
                sending.append(job)
        batch.sent = len(sending)
        self.dispatch.put(sending, batch.sink)
        return batch

    async def _send(self, client: Client, job: Job) -> Result:
        """On the send loop: wait for the rate limit's slot, then one HTTP try."""
        if job.send_at is not None and (wait := job.send_at - time.monotonic()) > 0:
            await asyncio.sleep(wait)
        return await send(None if job.target_kind == _REALTIME else client, job)

    # --- one round (the sweep, tests) ---------------------------------------------------------

    def run_once(self, *, batch_size: int | None = None) -> int:
        """Claim, send and record one batch (plus any half-open probes). Returns rows handled."""
        batch = self.claim(batch_size=batch_size)
        if batch.jobs:
            self.record(self.collect(self.submit(batch)))
        return len(batch.jobs)

    def collect(self, batch: Batch) -> Batch:
        """Wait for the batch's sends, renewing every lease this deliverer holds meanwhile: a
        slow receiver must not let the lease lapse mid-send (another worker would send it)."""
        every = max(conf.get("OUTBOX_LEASE_SECONDS") / 3, 0.1)
        sink = batch.sink
        if sink is None:
            return batch
        next_renewal = time.monotonic() + every
        while len(batch.results) < len(batch.jobs):
            # renewal goes by elapsed time: many short sends in waves outlast a lease too
            with contextlib.suppress(queue.Empty):
                batch.results.append(sink.get(timeout=max(0.0, next_renewal - time.monotonic())))
            if time.monotonic() >= next_renewal:
                self.renew_leases()
                next_renewal = time.monotonic() + every
        return batch

    def record(self, batch: Batch) -> None:
        """Write the batch's verdicts. Raises only if nothing was written (the caller may
        retry)."""
        if batch.results and not batch.recorded:
            tokens = {result.job.delivery_id: batch.token for result in batch.results}
            self._record(batch.results, tokens)
            batch.recorded = True  # committed: a retry must not write the attempts twice
        self.release(batch)

    def release(self, batch: Batch) -> None:
        """Stop renewing this batch's leases (recorded, or given up: they lapse)."""
        for job in batch.jobs:
            if self.held.get(job.delivery_id) == batch.token:
                del self.held[job.delivery_id]

    # --- the pipeline's side (outbox/worker.py) ------------------------------------------------

    def record_results(self, results: list[Result]) -> None:
        """Write a group of finished sends (of any claims) and stop renewing their leases.
        Raises only if nothing was written (the caller may retry with the same list)."""
        tokens = {r.job.delivery_id: self.held.get(r.job.delivery_id, "") for r in results}
        self._record(results, tokens)
        self.forget(results)

    def forget(self, results: list[Result]) -> None:
        """Stop renewing these deliveries' leases (recorded, or given up: they lapse)."""
        for result in results:
            self.held.pop(result.job.delivery_id, None)

    def renew_leases(self) -> int:
        """Push out locked_until for every delivery claimed and not yet recorded (best effort:
        if the database is away, the lease may lapse and the delivery goes again)."""
        if not self.held:
            return 0
        try:
            return leases_renew(
                ids=list(self.held),
                tokens=list(set(self.held.values())),
                lease_seconds=conf.get("OUTBOX_LEASE_SECONDS"),
                now=timezone.now(),
            )
        except DjangoDbError as exc:
            logger.warning("could not renew leases (%s): they may lapse", exc)
            return 0

    # --- recording ---------------------------------------------------------------------------

    def _record(self, results: list[Result], tokens: dict[int, str]) -> None:
        now = timezone.now()
        kept = verdicts_record(results=results, tokens=tokens, worker_id=self.worker_id, now=now)
        for result in results:
            verdict_log(result, recorded=result.job.delivery_id in kept)
        lost = len(results) - len(kept)
        if lost:
            logger.warning("%s verdicts discarded: their lease expired and was re-claimed", lost)
        self.delivered_total += sum(
            1 for r in results if r.outcome == "delivered" and r.job.delivery_id in kept
        )
        try:  # what the verdicts imply for the target: best effort once they are written
            ratelimit.slack_retry_after_honour(results)
            for r in results:
                if r.job.probe and not r.sent:  # a deferred probe: free it for the next try
                    breaker.probe_release(target_id=r.job.target_id)
            if breaker.needs_write(results):
                with transaction.atomic():
                    breaker.verdicts_apply(results, now)
                    breaker.gone_pause(results, now)
            dead = {
                r.job.delivery_id for r in results if r.job.delivery_id in kept and goes_dead(r)
            }
            if dead:
                operator_events.notices_for_verdicts(results, dead)
        except DjangoDbError as exc:
            logger.warning("verdicts recorded, target state (circuit, slot) not updated: %s", exc)
