"""The API's JSON parser: parses, then refuses text PostgreSQL cannot store.

jsonb rejects the NUL character (\\u0000) and a lone UTF-16 surrogate cannot be encoded;
either would otherwise surface as a 500 deep in an INSERT. They get 400 unstorable_text.
"""

from __future__ import annotations

from rest_framework import parsers

from core.api.errors import ApiError


def _bad_text(value: str) -> bool:
    if "\x00" in value:
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def check_storable(data, path: str = "$") -> None:
    """Raise ApiError for a string (key or value) that PostgreSQL cannot store."""
    stack = [(data, path)]
    while stack:
        value, where = stack.pop()
        if isinstance(value, str):
            if _bad_text(value):
                raise ApiError(
                    "unstorable_text",
                    "Text may not contain NUL characters or unpaired surrogates.",
                    details={"path": where},
                )
        elif isinstance(value, dict):
            for key, item in value.items():
                if _bad_text(key):
                    raise ApiError(
                        "unstorable_text",
                        "Keys may not contain NUL characters or unpaired surrogates.",
                        details={"path": where},
                    )
                stack.append((item, f"{where}.{key}"))
        elif isinstance(value, list):
            stack.extend((item, f"{where}[{index}]") for index, item in enumerate(value))


class JSONParser(parsers.JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        data = super().parse(stream, media_type, parser_context)
        check_storable(data)
        return data
