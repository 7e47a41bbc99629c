"""Realtime tokens: a browser's way into the event stream without a secret key.

A tenant's server mints one with its secret key (POST /api/realtime/tokens) and hands it to
the page, which opens `EventSource('/api/realtime/stream?token=…')` — the Pusher/Ably token
pattern. The token is signed (Django's signing, with a salt of its own, so no other signed
value of the project passes as one) and carries what it may see: the tenant, the minting key
(so revoking that key ends the token's streams), topics, event-type patterns, optionally one
assessment session, and its expiry. Nothing is stored: verifying is a signature check.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass

from django.conf import settings
from django.core import signing

from core.errors import DomainError, ErrorKind
from outbox.routing import OPERATOR_EVENT_TYPES

PREFIX = "rt_"
_SALT = "atlas.outbox.realtime.token.v1"
_PATTERN = re.compile(r"^(\*|[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*(\.\*)?)$")
MAX_SCOPE_ITEMS = 20
# payload fields whose value names an assessment session (assessments, uploads, payments)
_SESSION_FIELDS = ("sessionId", "assessmentSessionId")


@dataclass(frozen=True)
class Scope:
    """What one token may see of its tenant's events; empty tuples mean "all"."""

    tenant_id: str
    key_id: str
    expires_at: float
    topics: tuple[str, ...] = ()
    event_types: tuple[str, ...] = ()
    session_id: str | None = None

    def matches(self, message: dict) -> bool:
        if message["tenant_id"] != self.tenant_id:
            return False
        if self.topics and message["topic"] not in self.topics:
            return False
        if message["event_type"] in OPERATOR_EVENT_TYPES:
            # Atlas's notices about targets (names, errors) reach a browser only when its
            # token names them (`target.*`, `delivery.dead`): `*` means business events, as in
            # a target's subscriptions (outbox.routing)
            return any(
                p != "*" and _type_matches(p, message["event_type"]) for p in self.event_types
            )
        if self.event_types and not any(
            _type_matches(p, message["event_type"]) for p in self.event_types
        ):
            return False
        return self.session_id is None or _session_of(message) == self.session_id

    def seconds_left(self, now: float | None = None) -> float:
        return self.expires_at - (time.time() if now is None else now)


def _type_matches(pattern: str, event_type: str) -> bool:
    if pattern == "*":
        return True
    if pattern.endswith(".*"):
        return event_type.startswith(pattern[:-1])
    return event_type == pattern


def _session_of(message: dict) -> str | None:
    """The session an event is about; parsed once per message, only for session scopes."""
    if "session_id" not in message:
        import json

        payload = json.loads(message["data"]).get("payload")
        found = None
        if isinstance(payload, dict):
            found = next((str(payload[f]) for f in _SESSION_FIELDS if payload.get(f)), None)
        message["session_id"] = found
    return message["session_id"]


def _refuse(code: str, message: str, **details) -> DomainError:
    return DomainError(code, message, kind=ErrorKind.INVALID, details=details or None)


def _clean_list(name: str, values, *, patterns: bool) -> tuple[str, ...]:
    if values is None:
        return ()
    if not isinstance(values, list) or len(values) > MAX_SCOPE_ITEMS:
        raise _refuse(
            f"invalid_{name}", f"{name} must be a list of at most {MAX_SCOPE_ITEMS} strings."
        )
    cleaned = []
    for value in values:
        ok = isinstance(value, str) and 0 < len(value) <= 100
        if ok and patterns:
            ok = bool(_PATTERN.match(value))
        if not ok or any(ord(c) < 32 for c in value):
            hint = " (an event type, 'prefix.*' or '*')" if patterns else ""
            raise _refuse(f"invalid_{name}", f"{name} holds an invalid entry{hint}.", value=value)
        cleaned.append(value)
    return tuple(sorted(set(cleaned)))


def token_create(
    *, tenant_id: str, key_id: str, topics=None, event_types=None, session_id=None, ttl=None
) -> tuple[str, Scope]:
    """A signed token for (tenant, minting key, scope); 400s name the field that is wrong."""
    low = settings.OUTBOX_REALTIME_TOKEN_MIN_TTL_SECONDS
    high = settings.OUTBOX_REALTIME_TOKEN_MAX_TTL_SECONDS
    ttl = settings.OUTBOX_REALTIME_TOKEN_DEFAULT_TTL_SECONDS if ttl is None else ttl
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not low <= ttl <= high:
        raise _refuse(
            "ttl_out_of_range",
            f"ttlSeconds must be a whole number of seconds from {low} to {high}.",
            min=low,
            max=high,
        )
    if session_id is not None:
        try:
            session_id = str(uuid.UUID(str(session_id)))
        except ValueError:
            raise _refuse("invalid_session_id", "sessionId must be a UUID.") from None
    scope = Scope(
        tenant_id=str(tenant_id),
        key_id=str(key_id),
        expires_at=int(time.time()) + ttl,
        topics=_clean_list("topics", topics, patterns=False),
        event_types=_clean_list("eventTypes", event_types, patterns=True),
        session_id=session_id,
    )
    body = {
        "t": scope.tenant_id,
        "k": scope.key_id,
        "e": scope.expires_at,
        "tp": list(scope.topics),
        "et": list(scope.event_types),
        "s": scope.session_id,
    }
    return PREFIX + signing.dumps(body, salt=_SALT, compress=True), scope


def token_read(token: str) -> Scope:
    """The scope a token grants; DomainError 401 invalid_realtime_token (forged, tampered,
    another kind of signed value) or realtime_token_expired."""
    if not token.startswith(PREFIX) or len(token) > 4000:
        raise _unauthenticated("invalid_realtime_token", "The realtime token is not valid.")
    try:
        body = signing.loads(token[len(PREFIX) :], salt=_SALT)
        scope = Scope(
            tenant_id=body["t"],
            key_id=body["k"],
            expires_at=float(body["e"]),
            topics=tuple(body["tp"]),
            event_types=tuple(body["et"]),
            session_id=body["s"],
        )
    except (signing.BadSignature, KeyError, TypeError, ValueError):
        raise _unauthenticated(
            "invalid_realtime_token", "The realtime token is not valid."
        ) from None
    if scope.seconds_left() <= 0:
        raise _unauthenticated(
            "realtime_token_expired",
            "The realtime token has expired: ask your server for a new one.",
        )
    return scope


def _unauthenticated(code: str, message: str) -> DomainError:
    return DomainError(code, message, kind=ErrorKind.UNAUTHENTICATED)
