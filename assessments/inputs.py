"""Input checks for the assessment endpoints: each bad input has its own error code.

Hand-written rather than serializer fields because DRF's generic codes (`required`,
`invalid`) would all collapse into `validation_error`; clients branch on these codes.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from assessments.models import AssessmentSession
from core.api.errors import ApiError
from core.validation import EMAIL_REGEX

_EMAIL = re.compile(EMAIL_REGEX)
QUESTION_ID = re.compile(r"^[A-Za-z0-9_.:\-]{1,100}$")


def _bad(code: str, message: str, field: str, status_code: int = 400):
    raise ApiError(code, message, status_code=status_code, details={"field": field})


def body_object(data) -> dict:
    if not isinstance(data, dict):
        _bad("invalid_body", "The body must be a JSON object.", "body")
    return data


def uuid_value(value, *, code: str, field: str) -> uuid.UUID:
    if isinstance(value, str):
        try:
            return uuid.UUID(value)
        except ValueError:
            pass
    _bad(code, f"{field} must be a UUID (e.g. from crypto.randomUUID()).", field)


def optional_object(value, *, code: str, field: str) -> dict | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        _bad(code, f"{field} must be a JSON object.", field)
    return value


def email_value(value) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 254 or not _EMAIL.match(value.strip()):
        _bad("invalid_email", "email must look like name@example.com.", "email")
    return value.strip()


def first_name_value(value) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > 200:
        _bad("invalid_first_name", "firstName must be 1–200 characters, not blank.", "firstName")
    return value.strip()


def status_value(value) -> str:
    if value not in AssessmentSession.Status.values:
        allowed = ", ".join(AssessmentSession.Status.values)
        _bad("invalid_status", f"status must be one of: {allowed}.", "status")
    return value


def json_size(value) -> int:
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


def answers_value(data: dict) -> dict:
    """`{questionId, answer}` or `{answers: {qid: answer, …}}` → {qid: answer}."""
    single, batch = "questionId" in data, "answers" in data
    if single == batch:
        _bad(
            "invalid_answers",
            "Send either {questionId, answer} or {answers: {questionId: answer, …}}.",
            "answers",
        )
    if single:
        if "answer" not in data:
            _bad("missing_answer", "answer is required with questionId.", "answer")
        answers = {data["questionId"]: data["answer"]}
    else:
        answers = data["answers"]
        if not isinstance(answers, dict) or not answers:
            _bad("invalid_answers", "answers must be a non-empty JSON object.", "answers")
    if len(answers) > settings.ASSESSMENTS_MAX_ANSWERS_PER_REQUEST:
        _bad(
            "too_many_answers",
            f"At most {settings.ASSESSMENTS_MAX_ANSWERS_PER_REQUEST} answers per request.",
            "answers",
        )
    for qid, answer in answers.items():
        if not isinstance(qid, str) or not QUESTION_ID.match(qid):
            _bad("invalid_question_id", "questionId: 1–100 of A-Z a-z 0-9 _ . : -", "questionId")
        if json_size(answer) > settings.ASSESSMENTS_ANSWER_MAX_BYTES:
            _bad(
                "answer_too_large",
                f"An answer may be at most {settings.ASSESSMENTS_ANSWER_MAX_BYTES} bytes.",
                qid,
                status_code=413,
            )
    return answers


# --- analytics events: validated one by one; a bad event is rejected alone ---------------


class EventRejected(Exception):
    def __init__(self, code: str):
        self.code = code


def event_time_bounds() -> tuple[datetime, datetime]:
    """Clocks drift, but a year-old or next-week timestamp is a bug worth rejecting."""
    now = timezone.now()
    return now - timedelta(days=365), now + timedelta(days=1)


def _event_timestamp(value, bounds) -> datetime:
    if isinstance(value, bool):
        raise EventRejected("invalid_timestamp")
    if isinstance(value, (int, float)):  # epoch milliseconds (Date.now())
        try:
            moment = datetime.fromtimestamp(value / 1000, tz=UTC)
        except (OverflowError, OSError, ValueError) as exc:
            raise EventRejected("invalid_timestamp") from exc
    elif isinstance(value, str):
        try:  # fromisoformat is the fast path for toISOString(); parse_datetime the lenient one
            moment = datetime.fromisoformat(value)
        except ValueError:
            moment = parse_datetime(value) if len(value) <= 40 else None
        if moment is None:
            raise EventRejected("invalid_timestamp")
        if timezone.is_naive(moment):
            moment = timezone.make_aware(moment, UTC)
    else:
        raise EventRejected("invalid_timestamp")
    if not (bounds[0] <= moment <= bounds[1]):
        raise EventRejected("invalid_timestamp")
    return moment


def event_value(event, *, bounds, check_encoding: bool = True) -> dict:
    """One event → a row dict, or EventRejected(code).

    check_encoding=False skips re-encoding the event for its size and NUL check: the caller
    knows the whole body is smaller than one event's limit and contains no \\u0000.
    """
    if not isinstance(event, dict):
        raise EventRejected("invalid_event")
    if check_encoding:
        encoded = json.dumps(event, separators=(",", ":"), ensure_ascii=False)
        try:
            size = len(encoded.encode())
        except UnicodeEncodeError as exc:  # a lone surrogate: PostgreSQL would refuse the batch
            raise EventRejected("invalid_event") from exc
        if size > settings.ASSESSMENTS_EVENT_MAX_BYTES:
            raise EventRejected("event_too_large")
        if "\\u0000" in encoded:  # PostgreSQL jsonb refuses NUL; it would fail the batch
            raise EventRejected("invalid_event")
    message_id, name = event.get("messageId"), event.get("name")
    if not isinstance(message_id, str) or not 1 <= len(message_id) <= 100:
        raise EventRejected("invalid_message_id")
    if not isinstance(name, str) or not name.strip() or len(name) > 100:
        raise EventRejected("invalid_name")
    session_id = event.get("sessionId")
    if session_id is not None:
        if not isinstance(session_id, str):
            raise EventRejected("invalid_session_id")
        try:
            session_id = str(uuid.UUID(session_id))
        except ValueError as exc:
            raise EventRejected("invalid_session_id") from exc
    properties = event.get("properties", {})
    if not isinstance(properties, dict):
        raise EventRejected("invalid_properties")
    return {
        "message_id": message_id,
        "name": name.strip(),
        "session_id": session_id,
        "properties": properties,
        "occurred_at": _event_timestamp(event.get("timestamp"), bounds),
    }
