"""GET /api/realtime/stream: Server-Sent Events of the caller's tenant (secret key).

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

from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIRequest
from django.http import StreamingHttpResponse

from core.api.errors import ApiError, error_response, http_status_for
from core.errors import DomainError
from outbox import conf
from outbox.models import OutboxEvent
from outbox.realtime import event_ids
from outbox.realtime.hub import event_message, hub
from tenants import rls
from tenants.keycache import ApiKeyPrincipal
from tenants.scoping import tenant_queryset
from tenants.services import apikey_authenticate

logger = logging.getLogger("outbox.realtime")
REPLAY_PAGE = 500
KEY_GONE = b": closed: the key is no longer valid\n\n"


def _raw_key(request) -> str:
    return request.headers.get("authorization", "")[7:].strip()


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


def _frame(message: dict) -> bytes:
    head = f"id: {message['event_id']}\nevent: {message['event_type']}\n"
    return (head + f"data: {message['data']}\n\n").encode()


async def stream(request):
    if not isinstance(request, ASGIRequest):
        return error_response(
            "realtime_needs_asgi",
            "The realtime stream is served by the ASGI server (see README: realtime).",
            501,
        )
    try:
        principal = await sync_to_async(_authenticate)(request)
        after = _last_event_id(request)
    except ApiError as exc:
        return error_response(exc.error_code, exc.message, exc.status_code, exc.details)
    except DomainError as exc:  # key authentication refused (once tenants raises domain errors)
        return error_response(exc.code, exc.message, http_status_for(exc), exc.details)
    topics = frozenset(t for t in request.GET.get("topic", "").split(",") if t)
    response = StreamingHttpResponse(
        _events(principal, _raw_key(request), topics, after), content_type="text/event-stream"
    )
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx: do not buffer the stream
    return response


async def _events(principal: ApiKeyPrincipal, raw_key: str, topics, after: int | None):
    the_hub = hub()
    sub, live_from = await the_hub.subscribe(principal.tenant_id, topics, principal.key_id)
    key_valid = sync_to_async(_key_still_valid)
    try:
        # a revocation announced between authentication and subscription reached no stream
        if not await key_valid(raw_key):
            yield KEY_GONE
            return
        yield b"retry: 2000\n: connected\n\n"
        if after is not None:  # stored events between the client's cursor and the live cursor
            while after < live_from and not sub.closed:
                page = await sync_to_async(_replay_page)(
                    principal.tenant_id, topics, after, live_from
                )
                for message in page:
                    yield _frame(message)
                after = page[-1]["seq"] if len(page) == REPLAY_PAGE else live_from
        keepalive = conf.get("OUTBOX_REALTIME_KEEPALIVE_SECONDS")
        next_check = time.monotonic() + keepalive
        while True:
            try:
                message = await asyncio.wait_for(
                    sub.queue.get(), max(0.0, next_check - time.monotonic())
                )
                idle = False
            except TimeoutError:
                message, idle = None, True
            if sub.closed:
                yield KEY_GONE
                return
            if sub.overflowed:
                return  # a slow reader: it resumes from Last-Event-ID, no gap
            if sub.recheck_due or time.monotonic() >= next_check:
                sub.recheck_due = False
                if not await key_valid(raw_key):
                    yield KEY_GONE
                    return
                next_check = time.monotonic() + keepalive
            if message is not None:
                yield _frame(message)
            elif idle:
                yield b": keepalive\n\n"
    finally:
        with contextlib.suppress(Exception):
            the_hub.unsubscribe(sub)
