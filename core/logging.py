"""JSON log lines (LOG_FORMAT=json): one object per line, with request/tenant/event context."""

from __future__ import annotations

import contextvars
import json
import logging
import re
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


# Access loggers whose lines carry a request target: (logger name, index of the target in the
# record's args, whether that arg is the whole request line "GET /path?query HTTP/1.1").
_ACCESS_TARGETS = {
    "django.server": (0, True),  # runserver: '"%s" %s %s' % (request line, status, size)
    "uvicorn.access": (2, False),  # '%s - "%s %s HTTP/%s" %d' % (client, method, target, …)
}
_QUERY_IN_REQUEST_LINE = re.compile(r"^(\S+ [^?\s]*)\?\S*")


def path_only(target: str) -> str:
    """A request target without its query string (which may carry a key or a token)."""
    return target.split("?", 1)[0]


class PathOnlyAccessFilter(logging.Filter):
    """Access log lines name the path, never the query string: a query string may carry a
    key, a token or personal data, and access logs are kept and shipped widely. Attached to
    the access loggers of runserver and uvicorn in settings.LOGGING (gunicorn's access log
    format, in gunicorn.conf.py, leaves the query string out itself)."""

    def filter(self, record: logging.LogRecord) -> bool:
        target = _ACCESS_TARGETS.get(record.name)
        args = record.args
        if target is None or not isinstance(args, tuple):
            return True
        index, is_request_line = target
        value = args[index] if len(args) > index else None
        if isinstance(value, str):
            cleaned = (
                _QUERY_IN_REQUEST_LINE.sub(r"\1", value) if is_request_line else path_only(value)
            )
            record.args = (*args[:index], cleaned, *args[index + 1 :])
        return True
