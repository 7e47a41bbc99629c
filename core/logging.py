"""JSON log lines (LOG_FORMAT=json): one object per line, with request/tenant/event context."""

from __future__ import annotations

import contextvars
import json
import logging
from datetime import UTC, datetime

# Set by the API middleware and the outbox worker so every line carries its context.
log_context: contextvars.ContextVar[dict | None] = contextvars.ContextVar(
    "atlas_log_context", default=None
)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **(log_context.get() or {}),
        }
        for key in ("tenant_id", "request_id", "event_id", "target", "delivery_id", "outcome"):
            if hasattr(record, key):
                line[key] = getattr(record, key)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)
