"""GET /api/realtime/stream: Server-Sent Events of the caller's tenant.

Two ways in: a secret key (`Authorization: Bearer sk_…`, servers), or `?token=rt_…`, a
realtime token minted by the tenant's server (browsers' EventSource; outbox.realtime.tokens).
A token stream sees only its scope, only from the tenant's allowed origins, and ends with
`event: token_expired` at its expiry, or `event: access_revoked` when its key goes.

Served by the ASGI process (uvicorn): each open stream is a coroutine waiting on a queue, so
hundreds of them hold no thread and no database connection. Under WSGI the view refuses with
501 realtime_needs_asgi instead of pinning a worker thread per stream.

A stream follows its key: the hub ends it when the key is revoked or its tenant deactivated
(NOTIFY), and the stream re-checks the key at every keep-alive interval, busy or idle.
SSE ids are opaque (outbox.realtime.event_ids); Last-Event-ID resumes from one of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIRequest
from django.http import StreamingHttpResponse

from core.api.errors import ApiError, error_response, http_status_for
from core.errors import DomainError
from outbox import conf
from outbox.models import OutboxEvent
from outbox.realtime import event_ids, tokens
from outbox.realtime.hub import event_message, hub
from tenants import rls
from tenants.scoping import tenant_queryset
from tenants.selectors import apikey_refusal, tenant_allowed_origins
from tenants.services import apikey_authenticate

logger = logging.getLogger("outbox.realtime")
REPLAY_PAGE = 500
KEY_GONE = b": closed: the key is no longer valid\n\n"


@dataclass(frozen=True)
class Access:
    """Who reads the stream: the tenant, the key that answers for it, and how to re-check.

    `refusal()` (sync, runs in a thread) says why the access has ended, or None. A token's
    `scope` narrows what the hub hands over and ends the stream at its expiry."""

    tenant_id: str
    key_id: str
    refusal: Callable[[], str | None]
    scope: tokens.Scope | None = None


def _ended(event: str, code: str) -> bytes:
    return f'event: {event}\ndata: {{"code":"{code}"}}\n\n'.encode()


def _raw_key(request) -> str:
    return request.headers.get("authorization", "")[7:].strip()


def _access(request) -> Access:
    if "token" in request.GET:
        return _token_access(request)
    principal = _authenticate(request)
    raw_key = _raw_key(request)
    return Access(
        principal.tenant_id,
        principal.key_id,
        lambda: None if _key_still_valid(raw_key) else "api_key_revoked",
    )


def _token_access(request) -> Access:
    raw = request.GET["token"]
    if raw.startswith("sk_"):
        raise ApiError(
            "secret_key_in_url",
            "Secret keys never go in a URL: mint a realtime token (POST /api/realtime/tokens) "
            "and revoke this key, it may be in logs already.",
        )
    scope = tokens.token_read(raw)  # 401 invalid / expired
    refusal = _token_key_refusal(scope.tenant_id, scope.key_id)
    if refusal is not None:
        raise ApiError(
            refusal, "The key that issued this realtime token is no longer valid.", status_code=401
        )
    origin = request.headers.get("Origin")
    if origin and origin.rstrip("/").lower() not in _allowed_origins(scope.tenant_id):
        raise ApiError(
            "origin_not_allowed",
            f"Origin {origin} may not open this tenant's stream.",
            status_code=403,
        )
    return Access(
        scope.tenant_id,
        scope.key_id,
        lambda: _token_key_refusal(scope.tenant_id, scope.key_id),
        scope,
    )


def _allowed_origins(tenant_id: str) -> set[str]:
    with rls.tenant_scope(tenant_id):
        return tenant_allowed_origins(tenant_id=tenant_id)


def _token_key_refusal(tenant_id: str, key_id: str) -> str | None:
    try:
        with rls.tenant_scope(tenant_id):
            return apikey_refusal(key_id=key_id)
    except Exception:  # cannot tell (database down): end the stream, the client resumes
        logger.warning("realtime: key re-check failed; ending the stream", exc_info=True)
        return "unavailable"


def _topics(request, access: Access) -> frozenset[str]:
    """?topic=a,b narrows the stream; a token's stream may narrow only within its topics."""
    asked = frozenset(t for t in request.GET.get("topic", "").split(",") if t)
    allowed = frozenset(access.scope.topics) if access.scope else frozenset()
    if allowed and asked - allowed:
        raise ApiError(
            "topic_not_in_token",
            "This realtime token does not cover these topics.",
            status_code=403,
            details={"topics": sorted(asked - allowed)},
        )
    return asked or allowed


def _authenticate(request):
    header = request.headers.get("authorization", "")
    if not header.lower().startswith("bearer "):
        raise ApiError(
            "authentication_required",
            "An API key is required: 'Authorization: Bearer <key>'.",
            status_code=401,
        )
    principal = apikey_authenticate(raw_key=_raw_key(request))
    if not principal.is_secret:
        raise ApiError(
            "secret_key_required",
            "The event stream carries every business event: it needs a secret key (sk_…).",
            status_code=403,
        )
    return principal


def _key_still_valid(raw_key: str) -> bool:
    try:
        apikey_authenticate(raw_key=raw_key)
    except DomainError:
        return False
    except Exception:  # cannot tell (database down): end the stream, the client resumes
        logger.warning("realtime: key re-check failed; ending the stream", exc_info=True)
        return False
    return True


def _last_event_id(request) -> int | None:
    raw = request.headers.get("last-event-id") or request.GET.get("lastEventId")
    if raw in (None, ""):
        return None
    seq = event_ids.decode(raw.strip())
    if seq is None:
        raise ApiError(
            "invalid_last_event_id",
            "Last-Event-ID must be the id of an event this stream sent; reconnect without it "
            "to receive events from now on.",
        )
    return seq


@rls.no_scope()  # the scope below is this stream's tenant only, whatever ran before
def _replay_page(tenant_id, topics, after: int, upto: int) -> list[dict]:
    """Stored events after the client's cursor (unfiltered by a token's scope: the caller
    filters, so the cursor advances over the whole page)."""
    with rls.tenant_scope(tenant_id):
        return _replay_rows(tenant_id, topics, after, upto)


def _replay_rows(tenant_id, topics, after: int, upto: int) -> list[dict]:
    queryset = tenant_queryset(OutboxEvent, tenant_id=tenant_id).filter(
        seq__gt=after, seq__lte=upto
    )
    if topics:
        queryset = queryset.filter(topic__in=topics)
    rows = queryset.order_by("seq").values_list(
        "seq", "tenant_id", "id", "topic", "event_type", "payload", "occurred_at"
    )[:REPLAY_PAGE]
    return [event_message(s, t, i, tp, et, json.dumps(p), o) for s, t, i, tp, et, p, o in rows]


def _frame(message: dict, named: bool = True) -> bytes:
    """One SSE frame. A token (browser) stream leaves out `event:` so every event reaches
    EventSource's onmessage (it can only listen to named events one name at a time); the
    type is in the data, and only the stream's own endings are named events."""
    head = f"id: {message['event_id']}\n"
    if named:
        head += f"event: {message['event_type']}\n"
    return (head + f"data: {message['data']}\n\n").encode()


async def stream(request):
    if not isinstance(request, ASGIRequest):
        return error_response(
            "realtime_needs_asgi",
            "The realtime stream is served by the ASGI server (see docs/api.md: realtime).",
            501,
        )
    try:
        access = await sync_to_async(_access)(request)
        after = _last_event_id(request)
        topics = _topics(request, access)
    except ApiError as exc:
        return error_response(exc.error_code, exc.message, exc.status_code, exc.details)
    except DomainError as exc:  # key or token refused
        return error_response(exc.code, exc.message, http_status_for(exc), exc.details)
    response = StreamingHttpResponse(
        _events(access, topics, after), content_type="text/event-stream"
    )
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx: do not buffer the stream
    return response


async def _events(access: Access, topics, after: int | None):
    the_hub = hub()
    scope = access.scope
    sub, live_from = await the_hub.subscribe(access.tenant_id, topics, access.key_id, scope)
    refusal = sync_to_async(access.refusal)
    gone = KEY_GONE if scope is None else None  # a token's stream says why, as an SSE event
    try:
        # a revocation announced between authentication and subscription reached no stream
        if (code := await refusal()) is not None:
            yield gone or _ended("access_revoked", code)
            return
        yield b"retry: 2000\n: connected\n\n"
        if after is not None:  # stored events between the client's cursor and the live cursor
            while after < live_from and not sub.closed:
                page = await sync_to_async(_replay_page)(access.tenant_id, topics, after, live_from)
                for message in page:
                    if scope is None or scope.matches(message):
                        yield _frame(message, named=scope is None)
                after = page[-1]["seq"] if len(page) == REPLAY_PAGE else live_from
        keepalive = conf.get("OUTBOX_REALTIME_KEEPALIVE_SECONDS")
        next_check = time.monotonic() + keepalive
        while True:
            wait = next_check - time.monotonic()
            if scope is not None:
                wait = min(wait, scope.seconds_left())
            try:
                message = await asyncio.wait_for(sub.queue.get(), max(0.0, wait))
                idle = False
            except TimeoutError:
                message, idle = None, True
            if sub.closed:  # its key revoked or its tenant deactivated (announced)
                if gone is None:
                    yield _ended("access_revoked", await refusal() or "api_key_revoked")
                else:
                    yield gone
                return
            if sub.overflowed:
                return  # a slow reader: it resumes from Last-Event-ID, no gap
            if scope is not None and scope.seconds_left() <= 0:
                yield _ended("token_expired", "realtime_token_expired")
                return
            if sub.recheck_due or time.monotonic() >= next_check:
                sub.recheck_due = False
                if (code := await refusal()) is not None:
                    yield gone or _ended("access_revoked", code)
                    return
                next_check = time.monotonic() + keepalive
            if message is not None:
                yield _frame(message, named=scope is None)
            elif idle:
                yield b": keepalive\n\n"
    finally:
        with contextlib.suppress(Exception):
            the_hub.unsubscribe(sub)
