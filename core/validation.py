"""Validation pieces shared by models and inputs of several apps."""

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


def check_storable(data, path: str = "$") -> None:
    """Raise DomainError for a string (key or value) that PostgreSQL cannot store: jsonb
    rejects NUL (\\u0000) and a lone UTF-16 surrogate cannot be encoded."""
    stack = [(data, path)]
    while stack:
        value, where = stack.pop()
        if isinstance(value, str):
            if _bad_text(value):
                raise DomainError(
                    "unstorable_text",
                    "Text may not contain NUL characters or unpaired surrogates.",
                    details={"path": where},
                )
        elif isinstance(value, dict):
            for key, item in value.items():
                if _bad_text(key):
                    raise DomainError(
                        "unstorable_text",
                        "Keys may not contain NUL characters or unpaired surrogates.",
                        details={"path": where},
                    )
                stack.append((item, f"{where}.{key}"))
        elif isinstance(value, list):
            stack.extend((item, f"{where}[{index}]") for index, item in enumerate(value))
