"""OpenAPI: every operation documents the one error shape for the errors it can answer with.

A drf-spectacular post-processing hook adds the `Error` component and, per operation, the
error statuses every API view can produce (400/401/403/404/405/413/415/429/500), without
overriding responses a view documents itself.
"""

from __future__ import annotations

ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "details"],
            "properties": {
                "code": {"type": "string", "description": "machine-readable, e.g. not_found"},
                "message": {"type": "string", "description": "human-readable"},
                "details": {"type": "object", "additionalProperties": True},
            },
        }
    },
}

_COMMON = {
    "400": "Invalid input (malformed_json, validation_error or an endpoint-specific code)",
    "404": "Unknown endpoint, or no such object for this tenant (not_found)",
    "405": "Method not allowed (method_not_allowed)",
    "413": "Body too large (payload_too_large)",
    "415": "Unsupported content type (unsupported_media_type)",
    "429": "Rate limited (rate_limited); see Retry-After",
    "500": "Unexpected error (internal_error)",
    "503": "Database unavailable (database_unavailable); see Retry-After",
}
_WRITES = {
    "409": "Conflicts with the stored state (e.g. an id reused with other content)",
    "422": "Well-formed but refused (e.g. idempotency_key_reused)",
}
_AUTHENTICATED = {
    "401": "Missing, invalid or revoked key (authentication_required, invalid_api_key, …)",
    "403": "Key may not call this endpoint (secret_key_required, origin_not_allowed, …)",
}


def add_error_responses(result, generator, request, public):
    components = result.setdefault("components", {}).setdefault("schemas", {})
    components["Error"] = ERROR_SCHEMA
    ref = {"$ref": "#/components/schemas/Error"}
    for path_item in result.get("paths", {}).values():
        for method, operation in path_item.items():
            if method not in {"get", "post", "put", "patch", "delete", "head", "options"}:
                continue
            responses = operation.setdefault("responses", {})
            errors = dict(_COMMON)
            if method in {"post", "put", "patch", "delete"}:
                errors.update(_WRITES)
            if operation.get("security") != [{}] and operation.get("security", True):
                errors.update(_AUTHENTICATED)
            for status, response in responses.items():
                # an error a view documents by description only gets the error body schema
                if status[:1] in {"4", "5"} and "content" not in response:
                    response["content"] = {"application/json": {"schema": ref}}
            for status, description in errors.items():
                responses.setdefault(
                    status,
                    {"description": description, "content": {"application/json": {"schema": ref}}},
                )
    return result
