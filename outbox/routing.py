"""Which targets an event goes to: a target's `event_types` patterns and optional payload
filter, checked inside SQL statements (the publish statement and the replay back-fill), so
routing costs no extra round trip. See docs/outbox-routing.md."""

from __future__ import annotations

import re

from core.errors import DomainError
from core.validation import check_storable

# Events Atlas publishes about its own targets (outbox/operator_events.py). `*` does not match
# them: a target hears about other targets only when it subscribes to these names or to
# `target.*` / `delivery.*`; and nobody else may publish them (they would look like Atlas).
OPERATOR_EVENT_TYPES = (
    "target.circuit_opened",
    "target.circuit_closed",
    "target.paused",
    "target.recovered",
    "delivery.dead",
)
OPERATOR_TOPIC = "operator"

MAX_PATTERNS = 50
MAX_FILTER_FIELDS = 10
MAX_FILTER_TEXT = 200
# `*`, or dot-separated names optionally ending in `.*` (a prefix: `payment.*` matches
# payment.completed and payment.refund.created).
_PATTERN = re.compile(r"^(\*|[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*(\.\*)?)$")
_OPERATOR_LIST = "(" + ", ".join(f"'{name}'" for name in OPERATOR_EVENT_TYPES) + ")"


def subscribed_sql(*, target: str, event_type: str, payload: str) -> str:
    """SQL that is true when target row `target` takes an event with this type and payload
    (SQL expressions). Patterns: exact name, `prefix.*`, or `*` (every event but Atlas's
    operator events); then the payload filter, a jsonb containment (`@>`: each filter field
    equals the payload's top-level field)."""
    return f"""(EXISTS (SELECT 1 FROM unnest({target}.event_types) AS p(pattern)
        WHERE p.pattern = {event_type}
           OR (p.pattern = '*' AND {event_type} NOT IN {_OPERATOR_LIST})
           OR (right(p.pattern, 2) = '.*' AND starts_with({event_type}, left(p.pattern, -1))))
     AND ({target}.payload_filter IS NULL OR {payload} @> {target}.payload_filter))"""


def event_types_check(patterns) -> list[str]:
    """A clean pattern list, or a 400 `invalid_event_types` naming the bad pattern."""
    if not isinstance(patterns, list) or not patterns:
        raise DomainError("invalid_event_types", "eventTypes must be a non-empty list of patterns.")
    if len(patterns) > MAX_PATTERNS:
        raise DomainError(
            "invalid_event_types",
            f"eventTypes may hold at most {MAX_PATTERNS} patterns.",
            details={"limit": MAX_PATTERNS},
        )
    for pattern in patterns:
        if not isinstance(pattern, str) or len(pattern) > 100 or not _PATTERN.match(pattern):
            raise DomainError(
                "invalid_event_types",
                "Each pattern is an event type (assessment.submitted), a prefix ending in .* "
                "(payment.*) or * (every event).",
                details={"pattern": str(pattern)[:100]},
            )
    return list(dict.fromkeys(patterns))  # order kept, duplicates dropped


def payload_filter_check(value) -> dict | None:
    """None, or an object of at most MAX_FILTER_FIELDS top-level fields with scalar values
    (exact match); anything else is a 400 `invalid_payload_filter`."""
    if value is None or value == {}:
        return None
    if not isinstance(value, dict) or len(value) > MAX_FILTER_FIELDS:
        raise DomainError(
            "invalid_payload_filter",
            f"payloadFilter must be an object of at most {MAX_FILTER_FIELDS} fields.",
        )
    for key, field_value in value.items():
        # the filter is checked against every event the tenant publishes: keep it small
        if len(key) > MAX_FILTER_TEXT or (
            isinstance(field_value, str) and len(field_value) > MAX_FILTER_TEXT
        ):
            raise DomainError(
                "invalid_payload_filter",
                f"payloadFilter fields and values are at most {MAX_FILTER_TEXT} characters.",
                details={"field": str(key)[:100], "limit": MAX_FILTER_TEXT},
            )
        if not isinstance(field_value, (str, int, float, bool)) and field_value is not None:
            raise DomainError(
                "invalid_payload_filter",
                "payloadFilter values must be strings, numbers, booleans or null "
                "(exact match on top-level fields).",
                details={"field": str(key)[:100]},
            )
    check_storable(value, "$.payloadFilter")  # NUL, lone surrogates, 1e999: jsonb refuses
    return value


def permanent_statuses_check(statuses) -> list[int]:
    """HTTP statuses 300-599 except 410 (which always pauses the target)."""
    if statuses is None:
        return []
    if not isinstance(statuses, list) or len(statuses) > 50:
        raise DomainError("invalid_permanent_statuses", "permanentStatuses must be a list.")
    for status in statuses:
        if isinstance(status, bool) or not isinstance(status, int) or not 300 <= status <= 599:
            raise DomainError(
                "invalid_permanent_statuses",
                "permanentStatuses holds HTTP statuses from 300 to 599.",
                details={"status": str(status)[:20]},
            )
    return sorted(set(statuses))


RESERVED_PREFIXES = ("target.", "delivery.")


def reserved_event_type_refuse(event_type: str, topic: str = "") -> None:
    """Tenants may not publish what looks like Atlas's own operator events: their types, any
    type under `target.` / `delivery.`, or the `operator` topic (a look-alike would reach
    `target.*` subscribers as Atlas's word, and silence real delivery.dead notices)."""
    if event_type.startswith(RESERVED_PREFIXES) or topic == OPERATOR_TOPIC:
        raise DomainError(
            "reserved_event_type",
            "target.*, delivery.* and the operator topic are Atlas's operator events; "
            "only Atlas publishes them.",
            details={"eventType": event_type, "topic": topic},
        )
