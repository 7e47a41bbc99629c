"""Validation pieces shared by models and inputs of several apps."""

import math

from django.db import models
from django.db.models import F, Func
from django.db.models.lookups import Exact

from core.errors import DomainError

# A sane email: something@something.tld, no spaces (the database refuses anything else).
EMAIL_REGEX = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"


def is_json_object(field: str) -> Exact:
    """CHECK helper: jsonb_typeof(field) = 'object'."""
    return Exact(Func(F(field), function="jsonb_typeof", output_field=models.CharField()), "object")


def _bad_text(value: str) -> bool:
    if "\x00" in value:
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


# Deeper JSON is refused: nothing we store needs it, and walking it costs stack and time.
MAX_JSON_DEPTH = 64


def _render(where) -> str:
    """A location kept as nested (parent, step) pairs, written out only for an error."""
    steps = []
    while isinstance(where, tuple):
        where, step = where
        steps.append(step)
    return where + "".join(reversed(steps))


def _refuse(code: str, message: str, where) -> DomainError:
    return DomainError(code, message, details={"path": _render(where)})


def check_storable(data, path: str = "$", depth: int = 1, *, text: bool = True) -> None:
    """Raise DomainError for JSON that PostgreSQL's jsonb cannot store or we do not take:

    - text (a key or a value) with NUL (\\u0000) or a lone UTF-16 surrogate: unstorable_text;
    - a number that is not finite (1e999 reads as Infinity, which jsonb refuses):
      invalid_json_number;
    - containers nested deeper than MAX_JSON_DEPTH (the root is level `depth`): json_too_deep.

    text=False skips the text check, for callers that check text their own cheaper way.
    """
    stack: list = [(data, path, depth)]
    while stack:
        value, where, level = stack.pop()
        if isinstance(value, str):
            if text and _bad_text(value):
                raise _refuse(
                    "unstorable_text",
                    "Text may not contain NUL characters or unpaired surrogates.",
                    where,
                )
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise _refuse(
                    "invalid_json_number", "Numbers must be finite (no 1e999, no NaN).", where
                )
        elif isinstance(value, dict | list):
            if level > MAX_JSON_DEPTH:
                raise _refuse(
                    "json_too_deep", f"JSON may nest at most {MAX_JSON_DEPTH} levels.", where
                )
            if isinstance(value, list):
                stack.extend(
                    (item, (where, f"[{index}]"), level + 1) for index, item in enumerate(value)
                )
                continue
            for key, item in value.items():
                if text and _bad_text(key):
                    raise _refuse(
                        "unstorable_text",
                        "Keys may not contain NUL characters or unpaired surrogates.",
                        where,
                    )
                stack.append((item, (where, f".{key}"), level + 1))
