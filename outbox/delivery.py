"""One delivery round: claim due rows (SKIP LOCKED + lease), send them concurrently, record.

Used by the long-running worker and by the django-q2 sweep. The worker is a system process:
it works across tenants by design, so its claims are SQL over ids, not tenant-scoped queries.
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
from datetime import timedelta

import requests
from django.db import connection, transaction
from django.utils import timezone
from requests.adapters import HTTPAdapter

from outbox import circuit, conf
from outbox.backoff import backoff_seconds
from outbox.models import Delivery, DeliveryAttempt, Target
from outbox.senders import Job, Result, send

logger = logging.getLogger("outbox.delivery")

OPEN = "('pending', 'retrying')"

# A delivery is due when its time has come, nobody holds a live lease, its target is neither
# paused nor tripped, and (ordering) no earlier open delivery of the same target and key exists.
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
          t.previous_secret, t.previous_secret_expires_at, t.timeout_seconds
"""

# Each result in one statement; `locked_by = token` fences out a worker whose lease expired.
_APPLY_SQL = """
UPDATE outbox_delivery d SET status = v.status, attempts = d.attempts + v.inc,
    next_attempt_at = v.next_at, delivered_at = v.delivered_at, last_error = v.err,
    locked_until = NULL, locked_by = '', updated_at = %s
FROM (VALUES {values}) AS v(id, status, inc, next_at, delivered_at, err)
WHERE d.id = v.id AND d.locked_by = %s
RETURNING d.id
"""


class RateLimiter:
    """Token bucket per target, per worker process (Slack: 1/s by default)."""

    def __init__(self):
        self._next_free: dict[str, float] = {}
        self._lock = threading.Lock()

    def reserve(self, target_id: str, per_second: float | None) -> float:
        """Seconds until this send may go (0 = now); reserves the slot."""
        if not per_second:
            return 0.0
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next_free.get(target_id, 0.0))
            self._next_free[target_id] = slot + 1.0 / per_second
            return slot - now


class Deliverer:
    """Holds the HTTP sessions (one pooled keep-alive session per target) and the thread pool."""

    def __init__(self, *, concurrency: int | None = None, worker_id: str | None = None):
        self.concurrency = concurrency or conf.get("OUTBOX_WORKER_CONCURRENCY")
        self.worker_id = worker_id or f"adhoc-{uuid.uuid4().hex[:8]}"
        self.pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="outbox-send")
        self.sessions: dict[str, requests.Session] = {}
        self.limiter = RateLimiter()
        self.delivered_total = 0

    def close(self):
        self.pool.shutdown(wait=True)
        for session in self.sessions.values():
            session.close()

    def session_for(self, target_id: str) -> requests.Session:
        session = self.sessions.get(target_id)
        if session is None:
            session = requests.Session()
            adapter = HTTPAdapter(pool_connections=1, pool_maxsize=self.concurrency, max_retries=0)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            self.sessions[target_id] = session
        return session

    # --- one round ---------------------------------------------------------------------------

    def run_once(self, *, batch_size: int | None = None) -> int:
        """Claim, send and record one batch (plus any half-open probes). Returns rows handled."""
        batch_size = batch_size or conf.get("OUTBOX_BATCH_SIZE")
        lease = conf.get("OUTBOX_LEASE_SECONDS")
        token = f"{self.worker_id}:{uuid.uuid4().hex[:8]}"
        now = timezone.now()
        jobs = []
        for target_id in circuit.probes_take(now=now, lease_seconds=lease):
            probe = self._claim(now, token, lease, 1, "half_open", target_id)
            if not probe:
                circuit.probe_release(target_id=target_id)
            jobs += probe
        jobs += self._claim(now, token, lease, batch_size, "closed", None)
        if not jobs:
            return 0
        limits = self._rate_limits({j.target_id for j in jobs})
        results = list(self.pool.map(lambda job: self._send(job, limits), jobs))
        self._record(results, token)
        return len(jobs)

    def _claim(self, now, token, lease, limit, circuit_state, target_id) -> list[Job]:
        with transaction.atomic(), connection.cursor() as cursor:
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

    def _rate_limits(self, target_ids) -> dict[str, float | None]:
        return dict(
            Target.objects.filter(id__in=target_ids).values_list("id", "rate_limit_per_second")
        )

    def _send(self, job: Job, limits) -> Result:
        wait = self.limiter.reserve(job.target_id, limits.get(uuid.UUID(job.target_id)))
        if wait > 1.0:  # beyond the next second: hand it back rather than hold the lease
            return Result(job, "deferred", retry_after=wait, sent=False)
        if wait > 0:
            time.sleep(wait)
        return send(self.session_for(job.target_id), job)

    # --- recording ---------------------------------------------------------------------------

    def _record(self, results: list[Result], token: str) -> None:
        now = timezone.now()
        targets = {
            str(t.id): t for t in Target.objects.filter(id__in={r.job.target_id for r in results})
        }
        rows, attempts, realtime = [], [], []
        for result in results:
            target = targets[result.job.target_id]
            rows.append(self._transition(result, target, now))
            if result.sent:
                attempts.append(_attempt_row(result, self.worker_id))
            if result.job.target_kind == "realtime" and result.outcome == "delivered":
                realtime.append(result.job)
        with transaction.atomic():
            DeliveryAttempt.objects.bulk_create(attempts)
            kept = self._apply(rows, token, now)
            for job in realtime:
                _broadcast(job)
            self._circuit(results, targets, now)
            self._pause_gone(results, targets, now)
        lost = len(rows) - len(kept)
        if lost:
            logger.warning("%s results discarded: their lease expired and was re-claimed", lost)
        self.delivered_total += sum(
            1 for r in results if r.outcome == "delivered" and r.job.delivery_id in kept
        )

    def _transition(self, result: Result, target: Target, now):
        job, status = result.job, Delivery.Status
        if result.outcome == "delivered":
            return (job.delivery_id, status.DELIVERED, 1, now, now, "")
        if result.outcome == "deferred":
            later = now + timedelta(seconds=result.retry_after or 1)
            current = status.RETRYING if job.attempts else status.PENDING
            return (job.delivery_id, current, 0, later, None, "")
        error = _error_text(result)
        attempt = job.attempts + 1
        max_attempts = target.max_attempts or conf.get("OUTBOX_MAX_ATTEMPTS")
        if result.outcome == "permanent" or attempt >= max_attempts:
            return (job.delivery_id, status.DEAD, 1, now, None, error)
        cap = target.backoff_max_seconds or conf.get("OUTBOX_BACKOFF_MAX_SECONDS")
        if result.retry_after is not None:
            delay = min(cap, result.retry_after)
        else:
            base = target.backoff_base_seconds or conf.get("OUTBOX_BACKOFF_BASE_SECONDS")
            delay = backoff_seconds(attempt=attempt, base=base, cap=cap, rng=random)
        return (job.delivery_id, status.RETRYING, 1, now + timedelta(seconds=delay), None, error)

    def _apply(self, rows, token, now) -> set[int]:
        row_sql = "(%s::bigint, %s, %s::int, %s::timestamptz, %s::timestamptz, %s)"
        sql = _APPLY_SQL.format(values=", ".join([row_sql] * len(rows)))
        params = [now, *(p for row in rows for p in row), token]
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            return {r[0] for r in cursor.fetchall()}

    def _circuit(self, results: list[Result], targets, now) -> None:
        """Consecutive runs of successes / failures per target, in completion order."""
        runs: dict[str, list[list]] = defaultdict(list)
        for result in results:
            if not result.sent or result.job.target_kind == "realtime":
                continue
            ok = result.outcome == "delivered"
            # a permanent 4xx is the receiver answering: it does not trip the breaker
            failed = result.outcome == "retry"
            if not ok and not failed:
                continue
            series = runs[result.job.target_id]
            if series and series[-1][0] == ok:
                series[-1][1] += 1
            else:
                series.append([ok, 1, _error_text(result)])
        for target_id, series in runs.items():
            for ok, count, error in series:
                if ok:
                    circuit.record_successes(target_id=target_id, count=count)
                else:
                    circuit.record_failures(
                        target_id=target_id, count=count, now=now, reason=error or "failure"
                    )

    def _pause_gone(self, results, targets, now) -> None:
        for result in results:
            if result.gone:
                Target.objects.filter(pk=result.job.target_id, paused_at__isnull=True).update(
                    paused_at=now, paused_reason="410 Gone from the receiver", updated_at=now
                )


def _job_from_row(row, now) -> Job:
    (
        delivery_id,
        tenant_id,
        event_id,
        seq,
        topic,
        event_type,
        payload,
        key,
        occurred_at,
        attempts,
        target_id,
        kind,
        url,
        secret,
        previous,
        previous_expires,
        timeout,
    ) = row
    signing = [secret] + (
        [previous] if previous and previous_expires and previous_expires > now else []
    )
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
    )


def _attempt_row(result: Result, worker_id: str) -> DeliveryAttempt:
    outcome = {"delivered": "delivered", "retry": "retry"}.get(result.outcome, "permanent")
    return DeliveryAttempt(
        tenant_id=result.job.tenant_id,
        delivery_id=result.job.delivery_id,
        number=result.job.attempts + 1,
        outcome=outcome,
        status_code=result.status_code,
        duration_ms=round(result.duration_ms, 2),
        response_excerpt=result.excerpt,
        error=result.error,
        worker=worker_id[:100],
    )


def _error_text(result: Result) -> str:
    return (result.error or "")[:1000]


def _broadcast(job: Job) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_notify(%s, %s)",
            [conf.CHANNEL_REALTIME, json.dumps({"tenant": job.tenant_id, "seq": job.seq})],
        )
