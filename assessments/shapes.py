"""One declaration per input shape: the same table validates a body and writes its OpenAPI
schema (assessments.schema renders a `Shape` for drf-spectacular), so the documentation is
generated from what actually validates.

Why a table of our own rather than DRF serializers or pydantic v2: clients branch on one
specific code per bad input (`invalid_session_id`, `answer_too_large` 413, …), reported for
the first refused field in a fixed order with `details.field` naming it. Serializers collect
every field's errors under generic codes (`required`, `invalid`) and always answer 400;
pydantic would need a validator per field plus a map from its error locations back to our
codes, and a new dependency. Speed decided nothing between them: measured on the events
batch (50 events, validation only, best of 15), the former hand-written checks took 4.1 µs an
event, this table 4.6 µs, a pydantic v2 model with the same rules 4.8 µs (8.3 µs for a
refused event, against 2.2 µs); end to end an event costs ~100 µs (bench/assessments.py:
≥ 9,000 events/s through the API before and after, the floor is 5,000). The plan of a shape
is kept as plain tuples because the events batch runs it once per event.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from core.errors import DomainError

ABSENT: Any = object()  # a key that is not in the body at all (as opposed to null)


def refuse(code: str, message: str, field: str, **kwargs: Any) -> DomainError:
    """The error for one refused input field; `details.field` names it."""
    return DomainError(code, message, details={"field": field}, **kwargs)


@dataclass(frozen=True, slots=True)
class Field:
    """One JSON key: how it is checked and how it is documented.

    `clean(value)` gets the value (None when the key is absent, unless `absent` says
    otherwise) and returns it cleaned, or raises ValueError for a plain refusal
    (answered with `code` and `message`) or a DomainError for a more specific one. With
    `context=True` it is called as `clean(value, context)`: values fixed once per request
    (e.g. the accepted time window), not recomputed per item of a batch.
    `arg` is the keyword the cleaned value is handed on as (default: the key itself).
    """

    key: str
    code: str
    message: str
    clean: Callable[..., Any]
    schema: Mapping[str, Any] | Callable[[], Mapping[str, Any]]
    required: bool = False
    arg: str | None = None
    absent: Any = None
    context: bool = False
    description: str = ""

    def openapi(self) -> dict[str, Any]:
        schema = dict(self.schema() if callable(self.schema) else self.schema)
        if self.description:
            schema["description"] = self.description
        return schema


@dataclass(frozen=True, slots=True)
class Rule:
    """A check across keys, run in its place among the fields: `check(data, cleaned)` may
    raise a DomainError or add to `cleaned`. The keys it checks are declared as fields with
    `clean=documented` so they still appear in the schema."""

    check: Callable[[dict, dict], None]


def documented(value: Any) -> Any:
    """For a field that a Rule checks: declared for the schema, passed through as it is."""
    return value


class Shape:
    """A JSON object input: its steps run in order and the first refusal is the answer."""

    def __init__(self, name: str, *steps: Field | Rule, description: str = "") -> None:
        self.name = name  # the OpenAPI component name
        self.steps = steps
        self.fields = tuple(step for step in steps if isinstance(step, Field))
        self.description = description
        # What clean() runs, as plain tuples: it is on the analytics events' hot path.
        self._plan = tuple(
            (step.check, "", None, "", False, None)
            if isinstance(step, Rule)
            else (None, step.key, step.absent, step.arg or step.key, step.context, step.clean)
            for step in steps
            if isinstance(step, Rule) or step.clean is not documented
        )

    def clean(self, data: Any, context: Any = None) -> dict[str, Any]:
        """The cleaned values by `arg`, or the first refused field's DomainError."""
        if not isinstance(data, dict):
            raise refuse("invalid_body", "The body must be a JSON object.", "body")
        cleaned: dict[str, Any] = {}
        key = ""
        try:
            for rule, key, absent, arg, with_context, clean in self._plan:
                if rule is not None:
                    rule(data, cleaned)
                elif with_context:
                    cleaned[arg] = clean(data.get(key, absent), context)
                else:
                    cleaned[arg] = clean(data.get(key, absent))
        except ValueError as exc:
            if not key:  # a Rule's own bug, not a refusal: its rules raise DomainError
                raise
            raise self._refused(key) from exc
        return cleaned

    def _refused(self, key: str) -> DomainError:
        field = next(field for field in self.fields if field.key == key)
        return refuse(field.code, field.message, key)

    def openapi(self) -> dict[str, Any]:
        schema: dict[str, Any] = {
            "type": "object",
            "properties": {field.key: field.openapi() for field in self.fields},
        }
        required = [field.key for field in self.fields if field.required]
        if required:
            schema["required"] = required
        if self.description:
            schema["description"] = self.description
        return schema
