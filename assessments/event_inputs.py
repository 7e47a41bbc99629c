"""Analytics events' input, declared once (assessments.shapes) like the other inputs.

Events come in batches of up to ASSESSMENTS_EVENTS_MAX_PER_REQUEST and are checked one by
one: a bad event is rejected alone (its index and code are reported), the others are stored.
The time window is computed once per batch (a context of the shape), not per event; the cost
of the table against the former hand-written checks is in assessments.shapes.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from assessments.inputs import OBJECT, UUID_MESSAGE, UUID_SCHEMA, required_object
from assessments.shapes import ABSENT, Field, Shape
from core.errors import DomainError, ErrorKind
from core.validation import check_storable


def event_time_bounds() -> tuple[datetime, datetime]:
    """Clocks drift, but a year-old or next-week timestamp is a bug worth rejecting."""
    now = timezone.now()
    return now - timedelta(days=365), now + timedelta(days=1)


def event_timestamp(value: Any, bounds: tuple[datetime, datetime]) -> datetime:
    """ISO 8601 or epoch milliseconds, within `bounds` (event_time_bounds, once a request)."""
    if isinstance(value, bool):
        raise ValueError("a boolean")
    if isinstance(value, (int, float)):  # epoch milliseconds (Date.now())
        try:
            moment = datetime.fromtimestamp(value / 1000, tz=UTC)
        except (OverflowError, OSError) as exc:
            raise ValueError("out of range") from exc
    elif isinstance(value, str):
        try:  # fromisoformat is the fast path for toISOString(); parse_datetime the lenient one
            parsed = datetime.fromisoformat(value)
        except ValueError:
            parsed = parse_datetime(value) if len(value) <= 40 else None
        if parsed is None:
            raise ValueError("not a date-time")
        moment = timezone.make_aware(parsed, UTC) if timezone.is_naive(parsed) else parsed
    else:
        raise ValueError("not a timestamp")
    if not (bounds[0] <= moment <= bounds[1]):
        raise ValueError("out of bounds")
    return moment


def message_id_value(value: Any) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= 100:
        raise ValueError("not a message id")
    return value


def event_name_value(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 100:
        raise ValueError("not a name")
    return value.strip()


def event_session_id(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("not a string")
    return str(uuid.UUID(value))


def event_properties(value: Any) -> dict:
    return {} if value is ABSENT else required_object(value)


EVENT_IN = Shape(
    "AssessmentEvent",
    Field(
        "messageId",
        "invalid_message_id",
        "messageId must be 1–100 characters.",
        message_id_value,
        {"type": "string", "minLength": 1, "maxLength": 100},
        required=True,
        arg="message_id",
        description="the client's id for the event: a repeat is stored once",
    ),
    Field(
        "name",
        "invalid_name",
        "name must be 1–100 characters, not blank.",
        event_name_value,
        {"type": "string", "minLength": 1, "maxLength": 100},
        required=True,
    ),
    Field(
        "sessionId",
        "invalid_session_id",
        UUID_MESSAGE.format("sessionId"),
        event_session_id,
        {**UUID_SCHEMA, "nullable": True},
        arg="session_id",
    ),
    Field(
        "properties",
        "invalid_properties",
        "properties must be a JSON object.",
        event_properties,
        OBJECT,
        absent=ABSENT,
    ),
    Field(
        "timestamp",
        "invalid_timestamp",
        "timestamp must be an ISO 8601 date-time or epoch milliseconds, within the last "
        "year and not more than a day ahead.",
        event_timestamp,
        {"oneOf": [{"type": "string", "format": "date-time"}, {"type": "number"}]},
        required=True,
        arg="occurred_at",
        context=True,
        description="ISO 8601 (toISOString()) or epoch milliseconds (Date.now())",
    ),
    description="One event; a bad one is rejected alone (its index and code in `errors`). "
    "At most ASSESSMENTS_EVENT_MAX_BYTES encoded (event_too_large); no NUL (invalid_event).",
)


def _events_list(value: Any) -> list:
    if not isinstance(value, list):
        raise ValueError("not a list")
    limit = settings.ASSESSMENTS_EVENTS_MAX_PER_REQUEST
    if len(value) > limit:
        raise DomainError(
            "too_many_events", f"At most {limit} events per request.", kind=ErrorKind.TOO_LARGE
        )
    return value


EVENTS_IN = Shape(
    "AssessmentEventsIn",
    Field(
        "events",
        "invalid_events",
        "events must be a list.",
        _events_list,
        lambda: {
            "type": "array",
            "items": EVENT_IN.openapi(),
            "maxItems": settings.ASSESSMENTS_EVENTS_MAX_PER_REQUEST,
        },
        required=True,
    ),
)


def events_need_encoding_check(body: bytes) -> bool:
    """Re-encoding each event (size / NUL / surrogate checks) is the costliest step: it is
    skipped when the whole body is within one event's limit and carries no escaped NUL or
    surrogate (a lone one would make PostgreSQL refuse the whole batch)."""
    return (
        len(body) > settings.ASSESSMENTS_EVENT_MAX_BYTES
        or b"\\u0000" in body
        or re.search(rb"\\u[dD][89a-fA-F]", body) is not None
    )


# The batch body is level 1, its events list 2: an event is level 3.
_EVENT_LEVEL = 3


def _event_json_code(event: dict) -> str | None:
    """Numbers jsonb cannot store (1e999 reads as Infinity) and nesting past core's limit:
    cheap enough for every event (a walk over its few values, no re-encoding)."""
    for value in event.values():
        if isinstance(value, dict | list | float):  # strings and ints need no walk
            try:
                check_storable(value, depth=_EVENT_LEVEL + 1, text=False)
            except DomainError as refused:
                return refused.code
    return None


def _event_encoding_code(event: dict) -> str | None:
    encoded = json.dumps(event, separators=(",", ":"), ensure_ascii=False)
    try:
        size = len(encoded.encode())
    except UnicodeEncodeError:  # a lone surrogate: PostgreSQL would refuse the batch
        return "invalid_event"
    if size > settings.ASSESSMENTS_EVENT_MAX_BYTES:
        return "event_too_large"
    if "\\u0000" in encoded:  # PostgreSQL jsonb refuses NUL; it would fail the batch
        return "invalid_event"
    return None


def events_clean(events: list, *, check_encoding: bool = True) -> tuple[list[dict], list[dict]]:
    """Each event through EVENT_IN: (rows to store, errors as {index, code}).

    A duplicate messageId is accepted and stored once. check_encoding=False skips re-encoding
    each event (see events_need_encoding_check).
    """
    valid: list[dict] = []
    errors: list[dict] = []
    seen: set[str] = set()
    bounds = event_time_bounds()
    for index, event in enumerate(events):
        if not isinstance(event, dict):
            errors.append({"index": index, "code": "invalid_event"})
            continue
        code = _event_json_code(event)
        if code is None and check_encoding:
            code = _event_encoding_code(event)
        if code is not None:
            errors.append({"index": index, "code": code})
            continue
        try:
            row = EVENT_IN.clean(event, bounds)
        except DomainError as refused:
            errors.append({"index": index, "code": refused.code})
            continue
        if row["message_id"] not in seen:
            seen.add(row["message_id"])
            valid.append(row)
    return valid, errors
