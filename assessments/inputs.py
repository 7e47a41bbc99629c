"""The assessment endpoints' inputs, each declared once (assessments.shapes): the table below
both validates a body and is the OpenAPI schema of it. Each bad input has its own code.
Analytics events have their own module: assessments.event_inputs.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from django.conf import settings

from assessments.models import AssessmentSession
from assessments.shapes import Field, Rule, Shape, documented, refuse
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


OBJECT = {"type": "object", "additionalProperties": True}
NULLABLE_OBJECT = {**OBJECT, "nullable": True}
UUID_SCHEMA = {"type": "string", "format": "uuid"}
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
    return Field(
        key, code, UUID_MESSAGE.format(key), uuid_value, UUID_SCHEMA, required=True, arg=arg
    )


def _optional_object(key: str, code: str, arg: str) -> Field:
    message = f"{key} must be a JSON object."
    return Field(key, code, message, optional_object, NULLABLE_OBJECT, arg=arg)


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
    Field(
        "sessionToken",
        "",
        "",
        documented,
        {"type": "string"},
        description="text/plain beacons only (they cannot set X-Session-Token): the token "
        "returned when the session was created",
    ),
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
            **OBJECT,
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
        OBJECT,
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
