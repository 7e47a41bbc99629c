"""The API's JSON parser: parses, then refuses what PostgreSQL cannot store or we do not take.

jsonb rejects the NUL character (\\u0000), a lone UTF-16 surrogate cannot be encoded and a
number like 1e999 reads as Infinity: each would otherwise surface as a 500 deep in an INSERT.
Nesting deeper than 64 levels is refused too (Python's parser overflows its stack on very deep
input). They get 400 unstorable_text, invalid_json_number and json_too_deep
(core.validation.check_storable), everywhere the API parses JSON.
"""

from __future__ import annotations

from rest_framework import parsers

from core.errors import DomainError
from core.validation import MAX_JSON_DEPTH, check_storable


class DepthSafeJSONParser(parsers.JSONParser):
    """Parses only: a body nested too deep for Python's parser is json_too_deep, not a 500.
    For bodies whose parts are checked one by one (the analytics events batch)."""

    def parse(self, stream, media_type=None, parser_context=None):
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError as exc:
            raise DomainError(
                "json_too_deep", f"JSON may nest at most {MAX_JSON_DEPTH} levels."
            ) from exc


class JSONParser(DepthSafeJSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        data = super().parse(stream, media_type, parser_context)
        check_storable(data)
        return data
