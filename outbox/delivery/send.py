"""Sending one delivery: request building per target kind, the HTTP try and its verdict.

Runs in the worker's thread pool: no database access here, only HTTP.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass, field
from datetime import datetime

import certifi
import urllib3
from urllib3.exceptions import HTTPError, NewConnectionError
from urllib3.exceptions import TimeoutError as Urllib3Timeout

from core.backoff import retry_after_seconds
from outbox.models import Target

EXCERPT_BYTES = 2048
RETRYABLE_STATUSES = {408, 425, 429} | set(range(500, 600))
USER_AGENT = "Atlas-Outbox/1.0"
_REALTIME, _SLACK = Target.Kind.REALTIME.value, Target.Kind.SLACK.value  # compared per send


@dataclass
class Job:
    """A claimed delivery with everything needed to send it (a snapshot from the claim)."""

    delivery_id: int
    tenant_id: str
    event_id: str
    seq: int
    topic: str
    event_type: str
    payload: dict
    idempotency_key: str
    occurred_at: datetime
    attempts: int
    target_id: str
    target_kind: str
    url: str
    secrets: list[str] = field(default_factory=list)
    timeout: float = 10.0
    # the target's policy, snapshotted by the claim (no extra query per batch)
    rate_limit: float | None = None
    max_attempts: int | None = None
    backoff_base: int | None = None
    backoff_max: int | None = None
    circuit_clean: bool = True  # closed with no failures: a success needs no circuit write
    probe: bool = False  # the one half-open probe of its target
    # set by the rate limit's reservation: send at this time.monotonic(), or hand back for later
    send_at: float | None = None
    defer_seconds: float | None = None


@dataclass
class Result:
    job: Job
    outcome: str  # delivered | retry | permanent | deferred
    status_code: int | None = None
    duration_ms: float = 0.0
    excerpt: str = ""
    error: str = ""
    retry_after: float | None = None
    gone: bool = False  # 410: pause the target
    sent: bool = True  # False when deferred (rate limit): no attempt is recorded


def webhook_body(job: Job) -> str:
    return json.dumps(
        {
            "id": job.event_id,
            "topic": job.topic,
            "eventType": job.event_type,
            "payload": job.payload,
            "tenantId": job.tenant_id,
            "occurredAt": job.occurred_at.isoformat().replace("+00:00", "Z"),
        },
        separators=(",", ":"),
    )


def sign(secret: str, msg_id: str, timestamp: int, body: str) -> str:
    """Standard Webhooks: v1,base64(HMAC-SHA256(base64-decoded secret, id.timestamp.body))."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{msg_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def webhook_request(job: Job, *, now: float | None = None) -> tuple[dict, str]:
    body = webhook_body(job)
    timestamp = int(now if now is not None else time.time())
    signatures = " ".join(sign(s, job.event_id, timestamp, body) for s in job.secrets)
    headers = {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": job.event_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signatures,
        "x-event-type": job.event_type,
        "x-idempotency-key": job.idempotency_key,
    }
    return headers, body


def slack_text(job: Job) -> str:
    """`[topic] event_type` plus the payload's main (scalar) fields, one per line."""
    lines = [f"*[{job.topic}] {job.event_type}*"]
    for key, value in list(job.payload.items())[:10]:
        if isinstance(value, (str, int, float, bool)) or value is None:
            lines.append(f"• {key}: {str(value)[:200]}")
    return "\n".join(lines)


def slack_request(job: Job) -> tuple[dict, str]:
    body = json.dumps({"text": slack_text(job)})
    return {"content-type": "application/json", "user-agent": USER_AGENT}, body


def pool_new(url: str, size: int) -> urllib3.HTTPConnectionPool:
    """One keep-alive connection pool per target (urllib3: what requests runs on, without
    its per-call overhead, which capped a worker at about 550 sends/s on the bench machine)."""
    tls = {"ca_certs": certifi.where()} if url.startswith("https:") else {}
    return urllib3.connection_from_url(url, maxsize=size, block=False, retries=False, **tls)


def send(pool: urllib3.HTTPConnectionPool | None, job: Job) -> Result:
    """One HTTP try. Never raises: every failure becomes a Result the worker records."""
    if job.target_kind == _REALTIME:
        # broadcast by the worker's NOTIFY in the same statement that marks it delivered
        return Result(job, "delivered")
    if pool is None:  # a caller's bug, never a delivery: the worker records it as a retry
        raise ValueError(f"no connection pool for {job.target_kind} target {job.target_id}")
    headers, body = slack_request(job) if job.target_kind == _SLACK else webhook_request(job)
    started = time.perf_counter()
    try:
        response = pool.urlopen(
            "POST",
            job.url,
            body=body.encode(),
            headers=headers,
            timeout=urllib3.Timeout(connect=min(job.timeout, 5.0), read=job.timeout),
            retries=False,
            redirect=False,
            assert_same_host=False,
        )
    except NewConnectionError as exc:  # a subclass of the timeout error in urllib3 2
        return _failed(job, started, f"connection error: {exc}")
    except Urllib3Timeout as exc:
        return _failed(job, started, f"timeout: {exc}")
    except HTTPError as exc:
        return _failed(job, started, f"connection error: {type(exc).__name__}: {exc}")
    except OSError as exc:
        return _failed(job, started, f"connection error: {exc}")
    duration = (time.perf_counter() - started) * 1000
    return verdict(job, response.status, response.headers, response.data or b"", duration)


def _failed(job: Job, started: float, error: str) -> Result:
    duration = (time.perf_counter() - started) * 1000
    return Result(job, "retry", duration_ms=duration, error=error[:1000])


def verdict(job: Job, status: int, headers, content: bytes, duration_ms: float) -> Result:
    """2xx delivered; 408/425/429/5xx retry (Retry-After on 429/503); other codes permanent."""
    excerpt = content[:EXCERPT_BYTES].decode("utf-8", "replace")
    result = Result(job, "delivered", status, duration_ms, excerpt)
    if 200 <= status < 300:
        return result
    if status in RETRYABLE_STATUSES:
        result.outcome = "retry"
        if status in (429, 503):
            result.retry_after = retry_after_seconds(headers.get("retry-after"))
    else:
        result.outcome = "permanent"
        result.gone = status == 410
    result.error = f"HTTP {status}"
    return result
