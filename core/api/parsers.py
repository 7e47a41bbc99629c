"""The API's JSON parser: parses, then refuses text PostgreSQL cannot store.

jsonb rejects the NUL character (\\u0000) and a lone UTF-16 surrogate cannot be encoded;
either would otherwise surface as a 500 deep in an INSERT. They get 400 unstorable_text.
"""

from __future__ import annotations

from rest_framework import parsers

from core.validation import check_storable


class JSONParser(parsers.JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        data = super().parse(stream, media_type, parser_context)
        check_storable(data)
        return data
