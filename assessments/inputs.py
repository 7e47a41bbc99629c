"""The assessment endpoints' inputs, each declared once (assessments.shapes): the table below
both validates a body and is the OpenAPI schema of it. Each bad input has its own code.

Analytics events come in batches of up to ASSESSMENTS_EVENTS_MAX_PER_REQUEST and are checked
one by one: a bad event is rejected alone (its index and code are reported), the others are
stored. The time window is computed once per batch (a context of the shape), not per event;
the cost of the table against the former hand-written checks is in assessments.shapes.
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

from assessments.models import AssessmentSession
from assessments.shapes import ABSENT, Field, Rule, Shape, documented, refuse
from core.errors import DomainError, ErrorKind
from core.validation import EMAIL_REGEX

_EMAIL = re.compile(EMAIL_REGEX)
QUESTION_ID = re.compile(r"^[A-Za-z0-9_.:\-]{1,100}$")
UUID_MESSAGE = "{} must be a UUID (e.g. from crypto.randomUUID())."


# --- value checks: return the cleaned value or raise ValueError (a plain refusal) ---------


def uuid_value(value: Any) -> uuid.UUID:
    if not isinstance(value, str):
        raise ValueError("not a string")
    return uuid.UUID(value)


def path_uuid(value: str, *, code: str, field: str) -> uuid.UUID:
    """An id in the URL path or query string."""
    try:
        return uuid_value(value)
    except ValueError as exc:
        raise refuse(code, UUID_MESSAGE.format(field), field) from exc


def optional_object(value: Any) -> dict | None:
    if value is not None and not isinstance(value, dict):
        raise ValueError("not an object")
    return value


def required_object(value: Any) -> dict:
    if not isinstance(value, dict):
        raise ValueError("not an object")
    return value


def email_value(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 254 or not _EMAIL.match(value.strip()):
        raise ValueError("not an email")
    return value.strip()


def first_name_value(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > 200:
        raise ValueError("not a first name")
    return value.strip()


def status_value(value: Any) -> str:
    if value not in AssessmentSession.Status.values:
        raise ValueError("not a status")
    return value


def json_size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


_OBJECT = {"type": "object", "additionalProperties": True}
_NULLABLE_OBJECT = {**_OBJECT, "nullable": True}
_UUID = {"type": "string", "format": "uuid"}
_STATUSES = ", ".join(AssessmentSession.Status.values)


def _email() -> Field:
    return Field(
        "email",
        "invalid_email",
        "email must look like name@example.com.",
        email_value,
        {"type": "string", "format": "email", "maxLength": 254, "nullable": True},
    )


def _first_name() -> Field:
    return Field(
        "firstName",
        "invalid_first_name",
        "firstName must be 1–200 characters, not blank.",
        first_name_value,
        {"type": "string", "minLength": 1, "maxLength": 200, "nullable": True},
        arg="first_name",
    )


def _uuid(key: str, code: str, arg: str) -> Field:
    return Field(key, code, UUID_MESSAGE.format(key), uuid_value, _UUID, required=True, arg=arg)


def _optional_object(key: str, code: str, arg: str) -> Field:
    message = f"{key} must be a JSON object."
    return Field(key, code, message, optional_object, _NULLABLE_OBJECT, arg=arg)


SESSION_IN = Shape(
    "AssessmentSessionIn",
    _uuid("sessionId", "invalid_session_id", "session_id"),
    Field(
        "status",
        "invalid_status",
        f"status must be one of: {_STATUSES}.",
        status_value,
        {"type": "string", "enum": list(AssessmentSession.Status.values)},
        required=True,
    ),
    _email(),
    _first_name(),
    _optional_object("formData", "invalid_form_data", "form_data"),
    _optional_object("metadata", "invalid_metadata", "metadata"),
)


# --- answers: {questionId, answer} is shorthand for {answers: {questionId: answer}} ---------


def _answers_rule(data: dict, cleaned: dict) -> None:
    single, batch = "questionId" in data, "answers" in data
    if single == batch:
        raise refuse(
            "invalid_answers",
            "Send either {questionId, answer} or {answers: {questionId: answer, …}}.",
            "answers",
        )
    if single:
        if "answer" not in data:
            raise refuse("missing_answer", "answer is required with questionId.", "answer")
        answers = {data["questionId"]: data["answer"]}
    else:
        answers = data["answers"]
        if not isinstance(answers, dict) or not answers:
            raise refuse("invalid_answers", "answers must be a non-empty JSON object.", "answers")
    limit = settings.ASSESSMENTS_MAX_ANSWERS_PER_REQUEST
    if len(answers) > limit:
        raise refuse("too_many_answers", f"At most {limit} answers per request.", "answers")
    for qid, answer in answers.items():
        if not isinstance(qid, str) or not QUESTION_ID.match(qid):
            raise refuse(
                "invalid_question_id", "questionId: 1–100 of A-Z a-z 0-9 _ . : -", "questionId"
            )
        if json_size(answer) > settings.ASSESSMENTS_ANSWER_MAX_BYTES:
            raise refuse(
                "answer_too_large",
                f"An answer may be at most {settings.ASSESSMENTS_ANSWER_MAX_BYTES} bytes.",
                qid,
                kind=ErrorKind.TOO_LARGE,
            )
    cleaned["answers"] = answers


_QUESTION_ID = {"type": "string", "pattern": QUESTION_ID.pattern}

ANSWERS_IN = Shape(
    "AssessmentAnswersIn",
    Rule(_answers_rule),
    Field(
        "questionId", "invalid_question_id", "", documented, _QUESTION_ID, description="with answer"
    ),
    Field("answer", "", "", documented, {}, description="any JSON value, with questionId"),
    Field(
        "answers",
        "invalid_answers",
        "",
        documented,
        lambda: {
            **_OBJECT,
            "minProperties": 1,
            "maxProperties": settings.ASSESSMENTS_MAX_ANSWERS_PER_REQUEST,
        },
        description="{questionId: answer, …}, instead of questionId and answer",
    ),
    description="Either {questionId, answer} or {answers: {questionId: answer, …}}; each answer "
    "at most ASSESSMENTS_ANSWER_MAX_BYTES (413 answer_too_large).",
)


# --- submit ----------------------------------------------------------------------------------


def _submission_size_rule(data: dict, cleaned: dict) -> None:
    limit = settings.ASSESSMENTS_SUBMISSION_MAX_BYTES
    if json_size([cleaned["answers"], cleaned["result"]]) > limit:
        raise DomainError(
            "submission_too_large",
            f"answers and result may be at most {limit} bytes together.",
            kind=ErrorKind.TOO_LARGE,
        )


SUBMIT_IN = Shape(
    "AssessmentSubmitIn",
    _uuid("submissionId", "invalid_submission_id", "submission_id"),
    _uuid("sessionId", "invalid_session_id", "session_id"),
    Field(
        "answers",
        "invalid_answers",
        "answers must be a JSON object.",
        required_object,
        _OBJECT,
        required=True,
    ),
    _optional_object("metadata", "invalid_metadata", "metadata"),
    _optional_object("result", "invalid_result", "result"),
    Rule(_submission_size_rule),
    _email(),
    _first_name(),
    description="answers and result together at most ASSESSMENTS_SUBMISSION_MAX_BYTES "
    "(413 submission_too_large).",
)


# --- analytics events -----------------------------------------------------------------------


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
        {**_UUID, "nullable": True},
        arg="session_id",
    ),
    Field(
        "properties",
        "invalid_properties",
        "properties must be a JSON object.",
        event_properties,
        _OBJECT,
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
        code = _event_encoding_code(event) if check_encoding else None
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
