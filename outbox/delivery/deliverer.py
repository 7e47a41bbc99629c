"""One delivery round: claim due rows (SKIP LOCKED + lease), send them concurrently, record.

Used by the long-running worker and by the django-q2 sweep. A round costs two statements on
the happy path: the claim and the record.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass, field
from datetime import datetime

from django.db import Error as DjangoDbError
from django.db import transaction
from django.utils import timezone
from urllib3 import HTTPConnectionPool

from outbox import conf
from outbox.delivery import breaker, ratelimit
from outbox.delivery.claim import deliveries_claim, leases_renew
from outbox.delivery.record import verdict_log, verdicts_record
from outbox.delivery.send import Job, Result, pool_new, send
from outbox.models import Target

logger = logging.getLogger("outbox.delivery")

PROBE_CHECK_SECONDS = 1.0
_REALTIME = Target.Kind.REALTIME.value  # read once: compared per delivery


@dataclass
class Batch:
    """Deliveries claimed under one lease token, then their futures, then their verdicts."""

    token: str
    jobs: list[Job]
    futures: list[Future] = field(default_factory=list)
    results: list[Result] = field(default_factory=list)
    recorded: bool = False


class Deliverer:
    """Holds the HTTP pools (one keep-alive connection pool per target) and the thread pool."""

    def __init__(self, *, concurrency: int | None = None, worker_id: str | None = None):
        self.concurrency = concurrency or conf.get("OUTBOX_WORKER_CONCURRENCY")
        self.worker_id = worker_id or f"adhoc-{uuid.uuid4().hex[:8]}"
        self.pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="outbox-send")
        self.pools: dict[tuple[str, str], HTTPConnectionPool] = {}
        self._pools_lock = threading.Lock()
        self.delivered_total = 0
        # lease token -> its delivery ids, for every batch claimed and not yet recorded
        self.held: dict[str, list[int]] = {}
        self._next_probe_check = 0.0

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        for pool in self.pools.values():
            pool.close()

    def pool_for(self, job: Job) -> HTTPConnectionPool:
        key = (job.target_id, job.url)  # a changed URL gets a fresh pool
        pool = self.pools.get(key)
        if pool is None:
            with self._pools_lock:
                pool = self.pools.get(key) or pool_new(job.url, self.concurrency)
                self.pools[key] = pool
        return pool

    # --- one round ---------------------------------------------------------------------------

    def run_once(self, *, batch_size: int | None = None) -> int:
        """Claim, send and record one batch (plus any half-open probes). Returns rows handled."""
        batch = self.claim(batch_size=batch_size)
        if batch.jobs:
            self.record(self.collect(self.submit(batch)))
        return len(batch.jobs)

    def claim(self, *, batch_size: int | None = None) -> Batch:
        batch_size = batch_size or conf.get("OUTBOX_BATCH_SIZE")
        lease = conf.get("OUTBOX_LEASE_SECONDS")
        token = f"{self.worker_id}:{uuid.uuid4().hex[:8]}"
        now = timezone.now()
        jobs = self._probes(now, token, lease)
        jobs += self._claim(now, token, lease, batch_size, Target.Circuit.CLOSED, None)
        if jobs:
            self.held[token] = [job.delivery_id for job in jobs]
        return Batch(token, jobs)

    def submit(self, batch: Batch) -> Batch:
        """Start the sends in the thread pool; the caller may use the database meanwhile.
        Rate-limit slots are reserved here, not at claim time: a batch claimed ahead waits
        for the one on the wire, and slots taken then would have gone stale (a burst)."""
        ratelimit.slots_reserve(batch.jobs)
        batch.futures = [self.pool.submit(self._send, job) for job in batch.jobs]
        return batch

    def collect(self, batch: Batch) -> Batch:
        """Wait for the sends, renewing every lease this deliverer holds meanwhile: a slow
        receiver must not let the lease lapse mid-send (another worker would send it too)."""
        every = max(conf.get("OUTBOX_LEASE_SECONDS") / 3, 0.1)
        pending = set(batch.futures)
        while pending:
            # renewal goes by elapsed time: many short sends in waves outlast a lease too
            _done, pending = futures_wait(pending, timeout=every)
            if pending:
                self.renew_leases()
        batch.results = [future.result() for future in batch.futures]
        return batch

    def renew_leases(self) -> int:
        """Push out locked_until for every batch claimed and not yet recorded (best effort:
        if the database is away, the lease may lapse and the delivery goes again)."""
        tokens = list(self.held)
        if not tokens:
            return 0
        ids = [delivery_id for token in tokens for delivery_id in self.held[token]]
        try:
            return leases_renew(
                ids=ids,
                tokens=tokens,
                lease_seconds=conf.get("OUTBOX_LEASE_SECONDS"),
                now=timezone.now(),
            )
        except DjangoDbError as exc:
            logger.warning("could not renew leases (%s): they may lapse", exc)
            return 0

    def record(self, batch: Batch) -> None:
        """Write the verdicts. Raises only if nothing was written (the caller may retry)."""
        if batch.results and not batch.recorded:
            self._record(batch)
        self.release(batch)

    def release(self, batch: Batch) -> None:
        """Stop renewing this batch's leases (recorded, or given up: they lapse)."""
        self.held.pop(batch.token, None)

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

    def _claim(self, now, token, lease, limit, circuit_state, target_id) -> list[Job]:
        return deliveries_claim(
            now=now,
            token=token,
            lease_seconds=lease,
            limit=limit,
            circuit_state=circuit_state,
            target_id=target_id,
        )

    def _send(self, job: Job) -> Result:
        try:
            return self._send_limited(job)
        except Exception as exc:  # e.g. a URL urllib3 cannot use: recorded, never a crash
            logger.exception("send failed before reaching the receiver")
            return Result(job, "retry", error=f"{type(exc).__name__}: {exc}"[:1000])

    def _send_limited(self, job: Job) -> Result:
        if job.defer_seconds is not None:  # no slot within the horizon: hand it back
            return Result(job, "deferred", retry_after=job.defer_seconds, sent=False)
        if job.send_at is not None and (wait := job.send_at - time.monotonic()) > 0:
            time.sleep(wait)
        return send(None if job.target_kind == _REALTIME else self.pool_for(job), job)

    # --- recording ---------------------------------------------------------------------------

    def _record(self, batch: Batch) -> None:
        results = batch.results
        now = timezone.now()
        kept = verdicts_record(
            results=results, token=batch.token, worker_id=self.worker_id, now=now
        )
        batch.recorded = True  # committed: a retry must not write the attempts twice
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
        except DjangoDbError as exc:
            logger.warning("verdicts recorded, target state (circuit, slot) not updated: %s", exc)
