"""Sending one delivery: request building per target kind, the HTTP try and its verdict.

Runs on the worker's event loop (delivery/client.py): no database access here, only HTTP.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
import socket
import ssl
import time
from dataclasses import dataclass, field
from datetime import datetime

import httptools

from core.backoff import retry_after_seconds
from outbox import conf
from outbox.delivery import egress
from outbox.delivery.client import Client, PeerClosed, ProxyRefused, destination
from outbox.models import Target
from outbox.routing import OPERATOR_TOPIC

logger = logging.getLogger("outbox.delivery")

EXCERPT_CHARS = 256  # what a tenant may see of a (public) receiver's answer
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
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
    permanent_statuses: frozenset[int] = frozenset()  # the target's: dead at once
    probe: bool = False  # the one half-open probe of its target
    # set by the rate limit's reservation: send at this time.monotonic(), or hand back for later
    send_at: float | None = None
    defer_seconds: float | None = None
    # the stored payload's JSON text (the claim's): a webhook sends it as-is, no re-serialising
    payload_json: str = ""


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
    """`{id, topic, eventType, payload, tenantId, occurredAt}`, compact. The payload goes out
    as the claim read it (`payload_json`): dict -> text per send cost the worker CPU."""
    dumps = json.dumps
    payload = job.payload_json or dumps(job.payload, separators=(",", ":"))
    occurred = job.occurred_at.isoformat().replace("+00:00", "Z")
    return (
        f'{{"id":{dumps(job.event_id)},"topic":{dumps(job.topic)},'
        f'"eventType":{dumps(job.event_type)},"payload":{payload},'
        f'"tenantId":{dumps(job.tenant_id)},"occurredAt":"{occurred}"}}'
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


def slack_escape(text: str) -> str:
    """Slack's own escaping: `<`, `>` and `&` are control characters in message text, so
    `<!channel>` or `<https://evil|Re-login>` from a visitor posts as plain text."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_text(job: Job) -> str:
    """`[topic] event_type` plus the payload's main (scalar) fields, one per line; every piece
    of tenant or visitor text escaped. Operator events get one short sentence instead."""
    if job.topic == OPERATOR_TOPIC:
        return operator_slack_text(job.event_type, job.payload)
    lines = [f"*[{slack_escape(job.topic)}] {slack_escape(job.event_type)}*"]
    for key, value in list(job.payload.items())[:10]:
        if isinstance(value, (str, int, float, bool)) or value is None:
            lines.append(f"• {slack_escape(str(key))}: {slack_escape(str(value)[:200])}")
    return "\n".join(lines)


# event type -> (emoji, what happened); the target's name and the reason are filled in
_OPERATOR_SENTENCES = {
    "target.circuit_opened": (":rotating_light:", "circuit opened: deliveries wait"),
    "target.circuit_closed": (":white_check_mark:", "circuit closed: delivering again"),
    "target.paused": (":double_vertical_bar:", "paused: deliveries wait until resumed"),
    "target.recovered": (":arrow_forward:", "resumed: delivering again"),
}


def operator_slack_text(event_type: str, payload: dict) -> str:
    """e.g. `:rotating_light: Target *n8n* circuit opened: deliveries wait (http_503)`."""
    name = slack_escape(str(payload.get("target", "?"))[:64])
    reason = str(payload.get("reason") or payload.get("lastError") or "")[:200]
    tail = f" ({slack_escape(reason)})" if reason else ""
    if event_type == "delivery.dead":
        count = payload.get("count", 1)
        minutes = payload.get("windowMinutes", 10)
        noun = "delivery" if count == 1 else "deliveries"
        return f":skull: Target *{name}*: {count} {noun} dead-lettered in {minutes} min{tail}"
    emoji, sentence = _OPERATOR_SENTENCES.get(event_type, (":information_source:", event_type))
    return f"{emoji} Target *{name}* {slack_escape(sentence)}{tail}"


def slack_request(job: Job) -> tuple[dict, str]:
    body = json.dumps({"text": slack_text(job)})
    return {"content-type": "application/json", "user-agent": USER_AGENT}, body


async def send(client: Client | None, job: Job) -> Result:
    """One HTTP try (on the worker's event loop). Never raises: every failure becomes a Result
    the worker records, its error one word of a fixed vocabulary (see `failure_code`), never
    the remote's bytes."""
    if job.target_kind == _REALTIME:
        # broadcast by the worker's NOTIFY in the same statement that marks it delivered
        return Result(job, "delivered")
    if client is None:  # a caller's bug, never a delivery: the worker records it as a retry
        raise ValueError(f"no HTTP client for {job.target_kind} target {job.target_id}")
    to = destination(job.url)
    if to is None:
        return Result(job, "permanent", error=egress.REFUSED)
    headers, body = slack_request(job) if job.target_kind == _SLACK else webhook_request(job)
    timeout = min(job.timeout, conf.MAX_TARGET_TIMEOUT_SECONDS)  # rows from before the cap
    started = time.perf_counter()
    try:
        response = await client.post((job.target_id, job.url), to, headers, body.encode(), timeout)
        duration = (time.perf_counter() - started) * 1000
        return verdict(
            job, response.status, response.headers, response.content, duration,
            public=response.public,
        )  # fmt: skip
    except egress.EgressRefused:
        return _failed(job, started, egress.REFUSED, outcome="permanent")
    except Exception as exc:  # noqa: BLE001 - every failure is a verdict, named from the list
        if not isinstance(exc, (OSError, httptools.HttpParserError)):
            logger.warning("unexpected send failure (recorded as a retry)", exc_info=True)
        return _failed(job, started, failure_code(exc))


def failure_code(exc: BaseException) -> str:
    """The word a tenant sees for a failed try: what happened, never what the peer said."""
    chain = _causes(exc)
    for kinds, code in _FAILURE_CODES:
        if any(isinstance(cause, kinds) for cause in chain):
            return code
    return "connection_error"


def _causes(exc: BaseException) -> list[BaseException]:
    """The exception, what it wraps (in args or `reason`) and its chain, breadth first."""
    seen: list[BaseException] = []
    queue: list[BaseException] = [exc]
    while queue and len(seen) < 16:
        current = queue.pop(0)
        if any(current is s for s in seen):
            continue
        seen.append(current)
        queue += [a for a in getattr(current, "args", ()) if isinstance(a, BaseException)]
        for linked in (getattr(current, "reason", None), current.__cause__, current.__context__):
            if isinstance(linked, BaseException):
                queue.append(linked)
    return seen


# First match wins, most specific first (an SSL error is also an OSError).
_FAILURE_CODES: list[tuple[type | tuple[type, ...], str]] = [
    ((ssl.SSLError, ssl.CertificateError), "tls_error"),
    (socket.gaierror, "dns_error"),
    (ProxyRefused, "proxy_error"),
    (ConnectionRefusedError, "connection_refused"),
    (PeerClosed, "connection_closed"),
    ((ConnectionResetError, BrokenPipeError, ConnectionAbortedError), "connection_reset"),
    (TimeoutError, "timeout"),
    (httptools.HttpParserError, "protocol_error"),
]


def _failed(job: Job, started: float, error: str, outcome: str = "retry") -> Result:
    duration = (time.perf_counter() - started) * 1000
    return Result(job, outcome, duration_ms=duration, error=error)


def excerpt(content: bytes) -> str:
    """A short, printable excerpt: control characters become U+FFFD, whitespace runs one
    space (no terminal escapes, no forged log lines in whatever displays it)."""
    text = content[: EXCERPT_CHARS * 4].decode("utf-8", "replace")
    text = " ".join(_CONTROL.sub("\ufffd", part) for part in text.split())
    return text[:EXCERPT_CHARS]


def verdict(
    job: Job, status: int, headers, content: bytes, duration_ms: float, *, public: bool = False
) -> Result:
    """2xx delivered; 410 Gone permanent and pauses the target; a status the target lists
    in `permanent_statuses` permanent; every other status is retried, as Svix does (a
    receiver briefly not ready, e.g. n8n's 404 while a workflow activates, gets its event
    later). Retry-After is honoured on 429/503. The body is kept (as a short excerpt) only
    from a public address: an allowed private network's pages are not for tenants to read."""
    result = Result(job, "delivered", status, duration_ms, excerpt(content) if public else "")
    if 200 <= status < 300:
        return result
    if status == 410 or status in job.permanent_statuses:
        result.outcome = "permanent"
        result.gone = status == 410
    else:
        result.outcome = "retry"
        if status in (429, 503):
            result.retry_after = retry_after_seconds(headers.get("retry-after"))
    result.error = f"http_{status}"
    return result
