"""One delivery round: claim due rows (SKIP LOCKED + lease), send them concurrently, record.

Used by the long-running worker and by the django-q2 sweep. The worker is a system process:
it works across tenants by design, so its claims are SQL over ids, not tenant-scoped queries.
A round costs two statements on the happy path: the claim and the record.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
import uuid
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass, field
from datetime import timedelta

from django.db import Error as DjangoDbError
from django.db import connection, transaction
from django.utils import timezone

from core.backoff import backoff_seconds
from outbox import circuit, conf
from outbox.models import Delivery, Target
from outbox.senders import Job, Result, pool_new, send

logger = logging.getLogger("outbox.delivery")

OPEN = "('pending', 'retrying')"
PROBE_CHECK_SECONDS = 1.0

# A delivery is due when its time has come, nobody holds a live lease, its target is neither
# paused nor tripped, and (ordering) no earlier open delivery of the same target and key exists.
# One statement, so it runs in its own transaction: the lease is visible once it returns.
_CLAIM_SQL = f"""
WITH due AS (
    SELECT d.id FROM outbox_delivery d
    JOIN outbox_target t ON t.id = d.target_id
    WHERE d.status IN {OPEN} AND d.next_attempt_at <= %(now)s
      AND (d.locked_until IS NULL OR d.locked_until < %(now)s)
      AND t.paused_at IS NULL AND t.circuit_state = %(circuit)s
      AND (%(target)s::uuid IS NULL OR d.target_id = %(target)s::uuid)
      AND (d.ordering_key IS NULL OR NOT EXISTS (
          SELECT 1 FROM outbox_delivery p
          WHERE p.target_id = d.target_id AND p.ordering_key = d.ordering_key
            AND p.status IN {OPEN} AND p.id < d.id))
    ORDER BY d.next_attempt_at, d.id
    LIMIT %(limit)s
    FOR UPDATE OF d SKIP LOCKED
)
UPDATE outbox_delivery d
SET locked_until = %(lease_until)s, locked_by = %(token)s
FROM due, outbox_outboxevent e, outbox_target t
WHERE d.id = due.id AND e.id = d.event_id AND t.id = d.target_id
RETURNING d.id, d.tenant_id, e.id, e.seq, e.topic, e.event_type, e.payload::text,
          e.idempotency_key, e.occurred_at, d.attempts, t.id, t.kind, t.url, t.secret,
          t.previous_secret, t.previous_secret_expires_at, t.timeout_seconds,
          t.rate_limit_per_second, t.max_attempts, t.backoff_base_seconds,
          t.backoff_max_seconds, (t.circuit_state = 'closed' AND t.circuit_failures = 0)
"""

# Every verdict of a round in one statement: the delivery rows (fenced by the lease token, so
# a worker whose lease expired changes nothing), the attempt rows (kept even then: evidence),
# and the realtime broadcast. One statement = one transaction, all or nothing.
_RECORD_SQL = f"""
WITH v (id, status, inc, next_at, delivered_at, err, tenant_id, number, outcome, status_code,
        duration_ms, excerpt, sent, broadcast) AS (
    SELECT * FROM unnest(%s::bigint[], %s::varchar[], %s::int[], %s::timestamptz[],
        %s::timestamptz[], %s::text[], %s::uuid[], %s::int[], %s::varchar[], %s::int[],
        %s::float8[], %s::text[], %s::bool[], %s::text[])
),
upd AS (
    UPDATE outbox_delivery d SET status = v.status, attempts = d.attempts + v.inc,
        next_attempt_at = v.next_at, delivered_at = v.delivered_at, last_error = v.err,
        locked_until = NULL, locked_by = '', updated_at = %s
    FROM v WHERE d.id = v.id AND d.locked_by = %s AND d.status IN {OPEN}
    RETURNING d.id
),
released AS (  -- cancelled by staff while on the wire: the status stays, the lease goes
    UPDATE outbox_delivery d SET locked_until = NULL, locked_by = ''
    FROM v WHERE d.id = v.id AND d.locked_by = %s AND d.status NOT IN {OPEN}
),
ins AS (
    INSERT INTO outbox_deliveryattempt (created_at, updated_at, tenant_id, delivery_id, number,
        outcome, status_code, duration_ms, response_excerpt, error, worker)
    SELECT %s, %s, v.tenant_id, v.id, v.number, v.outcome, v.status_code,
           v.duration_ms, v.excerpt, v.err, %s
    FROM v WHERE v.sent
)
SELECT upd.id FROM upd
UNION ALL
SELECT -1 FROM (SELECT pg_notify(%s, v.broadcast) FROM v
                WHERE v.broadcast IS NOT NULL AND v.id IN (SELECT id FROM upd)) AS b
"""


# A target's rate limit is shared by every worker: its row holds the next free send slot.
# One statement reserves the claimed jobs' slots that fall within the horizon (the rest are
# handed back without an attempt), on the database's clock so the workers' clocks don't matter.
RATE_HORIZON_SECONDS = 1.0
_RESERVE_SQL = """
WITH o AS (
    SELECT t.id, t.rate_limit_per_second AS rate, c.now, GREATEST(t.rate_next_at, c.now) AS start
    FROM outbox_target t, LATERAL (SELECT clock_timestamp() AS now) c
    WHERE t.id = %(target)s AND t.rate_limit_per_second > 0
    FOR NO KEY UPDATE OF t
), fit AS (
    -- clamped as a float first: a huge rate or a far slot must not overflow the int
    SELECT o.*, LEAST(%(wanted)s, GREATEST(0,
        floor((%(horizon)s - extract(epoch FROM o.start - o.now)) * o.rate) + 1))::int AS n
    FROM o
)
UPDATE outbox_target t SET rate_next_at = fit.start + make_interval(secs => fit.n / fit.rate)
FROM fit WHERE t.id = fit.id
RETURNING extract(epoch FROM fit.start - fit.now)::float8, fit.n, fit.rate
"""


@dataclass
class Batch:
    """Deliveries claimed under one lease token, then their futures, then their verdicts."""

    token: str
    jobs: list[Job]
    futures: list = field(default_factory=list)
    results: list[Result] = field(default_factory=list)
    recorded: bool = False


class Deliverer:
    """Holds the HTTP pools (one keep-alive connection pool per target) and the thread pool."""

    def __init__(self, *, concurrency: int | None = None, worker_id: str | None = None):
        self.concurrency = concurrency or conf.get("OUTBOX_WORKER_CONCURRENCY")
        self.worker_id = worker_id or f"adhoc-{uuid.uuid4().hex[:8]}"
        self.pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="outbox-send")
        self.pools: dict[tuple[str, str], object] = {}
        self._pools_lock = threading.Lock()
        self.delivered_total = 0
        # lease token -> its delivery ids, for every batch claimed and not yet recorded
        self.held: dict[str, list[int]] = {}
        self._next_probe_check = 0.0

    def close(self):
        self.pool.shutdown(wait=True)
        for pool in self.pools.values():
            pool.close()

    def pool_for(self, job: Job):
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
        jobs += self._claim(now, token, lease, batch_size, "closed", None)
        if jobs:
            self.held[token] = [job.delivery_id for job in jobs]
        return Batch(token, jobs)

    @staticmethod
    def _reserve_slots(jobs: list[Job]) -> None:
        """Rate-limited targets: a send time for the jobs that fit, a deferral for the rest."""
        limited: dict[str, list[Job]] = defaultdict(list)
        for job in jobs:
            if job.rate_limit:
                limited[job.target_id].append(job)
        for target_id, queue in limited.items():
            with connection.cursor() as cursor:
                cursor.execute(
                    _RESERVE_SQL,
                    {"target": target_id, "wanted": len(queue), "horizon": RATE_HORIZON_SECONDS},
                )
                row = cursor.fetchone()
            if row is None:  # the limit was lifted meanwhile
                continue
            first, fitting, rate = row
            base = time.monotonic()
            for i, job in enumerate(queue):
                if i < fitting:
                    job.send_at = base + first + i / rate
                else:
                    job.defer_seconds = first + fitting / rate

    def submit(self, batch: Batch) -> Batch:
        """Start the sends in the thread pool; the caller may use the database meanwhile.
        Rate-limit slots are reserved here, not at claim time: a batch claimed ahead waits
        for the one on the wire, and slots taken then would have gone stale (a burst)."""
        self._reserve_slots(batch.jobs)
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
        lease = conf.get("OUTBOX_LEASE_SECONDS")
        try:
            with connection.cursor() as cursor:
                cursor.execute(
                    "UPDATE outbox_delivery SET locked_until = %s"
                    " WHERE id = ANY(%s) AND locked_by = ANY(%s)",
                    [timezone.now() + timedelta(seconds=lease), ids, tokens],
                )
                return cursor.rowcount
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

    def _probes(self, now, token, lease) -> list[Job]:
        """Half-open targets: this worker may own the one probe (checked once a second)."""
        if time.monotonic() < self._next_probe_check:
            return []
        self._next_probe_check = time.monotonic() + PROBE_CHECK_SECONDS
        jobs = []
        for target_id in circuit.probes_take(now=now, lease_seconds=lease):
            probe = self._claim(now, token, lease, 1, "half_open", target_id)
            if not probe:
                circuit.probe_release(target_id=target_id)
            for job in probe:
                job.probe = True
            jobs += probe
        return jobs

    def _claim(self, now, token, lease, limit, circuit_state, target_id) -> list[Job]:
        with connection.cursor() as cursor:
            cursor.execute(
                _CLAIM_SQL,
                {
                    "now": now,
                    "lease_until": now + timedelta(seconds=lease),
                    "token": token,
                    "limit": limit,
                    "circuit": circuit_state,
                    "target": target_id,
                },
            )
            rows = cursor.fetchall()
        return [_job_from_row(row, now) for row in rows]

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
        return send(None if job.target_kind == "realtime" else self.pool_for(job), job)

    # --- recording ---------------------------------------------------------------------------

    def _record(self, batch: Batch) -> None:
        results, token = batch.results, batch.token
        now = timezone.now()
        # one array per column (14 parameters, whatever the batch size), then upd, ins, notify
        columns = [
            list(column) for column in zip(*(_verdict_row(r, now) for r in results), strict=True)
        ]
        params = columns + [now, token, token, now, now, self.worker_id[:100]]
        params.append(conf.CHANNEL_REALTIME)
        with connection.cursor() as cursor:
            cursor.execute(_RECORD_SQL, params)
            kept = {row[0] for row in cursor.fetchall() if row[0] != -1}
        batch.recorded = True  # committed: a retry must not write the attempts twice
        for result in results:
            _log_verdict(result, recorded=result.job.delivery_id in kept)
        lost = len(results) - len(kept)
        if lost:
            logger.warning("%s verdicts discarded: their lease expired and was re-claimed", lost)
        self.delivered_total += sum(
            1 for r in results if r.outcome == "delivered" and r.job.delivery_id in kept
        )
        try:  # what the verdicts imply for the target: best effort once they are written
            self._honour_slack_retry_after(results)
            for r in results:
                if r.job.probe and not r.sent:  # a deferred probe: free it for the next try
                    circuit.probe_release(target_id=r.job.target_id)
            if self._needs_circuit_write(results):
                with transaction.atomic():
                    self._circuit(results, now)
                    self._pause_gone(results, now)
        except DjangoDbError as exc:
            logger.warning("verdicts recorded, target state (circuit, slot) not updated: %s", exc)

    @staticmethod
    def _honour_slack_retry_after(results) -> None:
        """A 429 with Retry-After from a rate-limited target (Slack) holds back every send
        to it, by every worker, not only the delivery that got it: its next free slot moves."""
        wait: dict[str, float] = {}
        for r in results:
            if r.status_code == 429 and r.retry_after and r.job.rate_limit:
                seconds = min(r.retry_after, _backoff_cap(r.job))  # a silly value: not forever
                wait[r.job.target_id] = max(wait.get(r.job.target_id, 0.0), seconds)
        for target_id, seconds in wait.items():
            with connection.cursor() as cursor:
                cursor.execute(
                    "UPDATE outbox_target SET rate_next_at = GREATEST(rate_next_at,"
                    " clock_timestamp() + make_interval(secs => %s)) WHERE id = %s",
                    [seconds, target_id],
                )

    @staticmethod
    def _needs_circuit_write(results) -> bool:
        return any(
            r.gone or r.outcome == "retry" or (r.outcome == "delivered" and not r.job.circuit_clean)
            for r in results
        )

    def _circuit(self, results: list[Result], now) -> None:
        """Consecutive runs of successes / failures per target, in completion order."""
        runs: dict[str, list[list]] = defaultdict(list)
        for result in results:
            if not result.sent or result.job.target_kind == "realtime":
                continue
            ok = result.outcome == "delivered"
            # a permanent 4xx is the receiver answering: it does not trip the breaker
            if not ok and result.outcome != "retry":
                continue
            series = runs[result.job.target_id]
            if series and series[-1][0] == ok:
                series[-1][1] += 1
            else:
                series.append([ok, 1, result.error[:200]])
        for target_id, series in runs.items():
            for ok, count, error in series:
                if ok:
                    circuit.record_successes(target_id=target_id, count=count)
                else:
                    circuit.record_failures(
                        target_id=target_id, count=count, now=now, reason=error or "failure"
                    )

    @staticmethod
    def _pause_gone(results, now) -> None:
        for result in results:
            if result.gone:
                Target.objects.filter(pk=result.job.target_id, paused_at__isnull=True).update(
                    paused_at=now, paused_reason="410 Gone from the receiver", updated_at=now
                )


def storable(text: str) -> str:
    """A receiver's bytes may hold NUL, which PostgreSQL text refuses (and one refused row
    would fail the whole round's record, again and again)."""
    return text.replace("\x00", "\ufffd")


def _backoff_cap(job: Job) -> float:
    return job.backoff_max or conf.get("OUTBOX_BACKOFF_MAX_SECONDS")


def _verdict_row(result: Result, now) -> tuple:
    """(delivery columns…, attempt columns…) for one result."""
    job, status = result.job, Delivery.Status
    error = storable(result.error or "")[:1000]
    attempt = job.attempts + 1
    outcome = {"delivered": "delivered", "retry": "retry"}.get(result.outcome, "permanent")
    broadcast = None
    if result.outcome == "delivered":
        row = (status.DELIVERED, 1, now, now, "")
        if job.target_kind == "realtime":
            broadcast = json.dumps({"tenant": job.tenant_id, "seq": job.seq})
    elif result.outcome == "deferred":
        later = now + timedelta(seconds=result.retry_after or 1)
        row = (status.RETRYING if job.attempts else status.PENDING, 0, later, None, "")
    elif result.outcome == "permanent" or attempt >= (
        job.max_attempts or conf.get("OUTBOX_MAX_ATTEMPTS")
    ):
        row = (status.DEAD, 1, now, None, error)
    else:
        cap = _backoff_cap(job)
        if result.retry_after is not None:
            delay = min(cap, result.retry_after)
        else:
            base = job.backoff_base or conf.get("OUTBOX_BACKOFF_BASE_SECONDS")
            delay = backoff_seconds(attempt=attempt, base=base, cap=cap, rng=random)
        row = (status.RETRYING, 1, now + timedelta(seconds=delay), None, error)
    return (
        job.delivery_id,
        *row,
        job.tenant_id,
        attempt,
        outcome,
        result.status_code,
        round(result.duration_ms, 2),
        storable(result.excerpt),
        result.sent,
        broadcast,
    )


def _job_from_row(row, now) -> Job:
    (delivery_id, tenant_id, event_id, seq, topic, event_type, payload, key, occurred_at,
     attempts, target_id, kind, url, secret, previous, previous_expires, timeout, rate_limit,
     max_attempts, backoff_base, backoff_max, circuit_clean) = row  # fmt: skip
    signing = [secret]
    if previous and previous_expires and previous_expires > now:
        signing.append(previous)
    return Job(
        delivery_id=delivery_id,
        tenant_id=str(tenant_id),
        event_id=str(event_id),
        seq=seq,
        topic=topic,
        event_type=event_type,
        payload=json.loads(payload),
        idempotency_key=key,
        occurred_at=occurred_at,
        attempts=attempts,
        target_id=str(target_id),
        target_kind=kind,
        url=url,
        secrets=signing,
        timeout=timeout,
        rate_limit=rate_limit,
        max_attempts=max_attempts,
        backoff_base=backoff_base,
        backoff_max=backoff_max,
        circuit_clean=circuit_clean,
    )


def _log_verdict(result: Result, *, recorded: bool) -> None:
    """One line per delivery verdict carrying tenant, event, target and delivery ids (as JSON
    fields with LOG_FORMAT=json). Failures at WARNING; successes at DEBUG (hot path)."""
    job = result.job
    level = logging.DEBUG if result.outcome in {"delivered", "deferred"} else logging.WARNING
    if not logger.isEnabledFor(level):
        return
    logger.log(
        level,
        "delivery %s: %s (status %s, %.0f ms)%s%s",
        job.delivery_id,
        result.outcome,
        result.status_code,
        result.duration_ms,
        f": {result.error}" if result.error else "",
        "" if recorded else " [lease lost: not recorded]",
        extra={
            "tenant_id": job.tenant_id,
            "event_id": job.event_id,
            "target": job.target_id,
            "delivery_id": job.delivery_id,
            "outcome": result.outcome,
        },
    )
