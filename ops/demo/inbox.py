"""The webhook inspector's store: the last deliveries the inbox received, newest first.

One JSON file per delivery under var/demo-inbox (shared by every process on the machine, no
table or migration for a demo). Each delivery is checked on arrival against the demo inbox
target's Standard Webhooks secrets, so the page shows what a receiver would conclude.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path

from django.conf import settings
from django.utils import timezone
from standardwebhooks.webhooks import Webhook

KEEP = 100  # deliveries kept; older files are removed on arrival
MAX_BODY_BYTES = 64 * 1024
# what a receiver looks at; other headers are shown too, these first
SIGNATURE_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")


def inbox_dir() -> Path:
    return settings.VAR_DIR / "demo-inbox"


def verify(body: bytes, headers: dict[str, str], secrets_: list[str]) -> tuple[bool, str]:
    """(verified, why not). Any of the target's live secrets may have signed it."""
    if not secrets_:
        return False, "no inbox target: nothing to verify against"
    reason = "signature mismatch"
    for secret in secrets_:
        try:
            Webhook(secret).verify(body, headers, json_parse=False)
            return True, ""
        except Exception as exc:  # WebhookVerificationError, or a malformed header
            reason = str(exc) or exc.__class__.__name__
    return False, reason


def record(body: bytes, headers: dict[str, str], secrets_: list[str]) -> dict:
    verified, reason = verify(body, headers, secrets_)
    ordered = {h: headers[h] for h in SIGNATURE_HEADERS if h in headers}
    ordered.update({k: v for k, v in sorted(headers.items()) if k not in ordered})
    entry = {
        "id": f"{time.time_ns():020d}-{secrets.token_hex(3)}",
        "receivedAt": timezone.now().isoformat().replace("+00:00", "Z"),
        "verified": verified,
        "reason": reason,
        "eventType": headers.get("x-event-type", ""),
        "headers": ordered,
        "body": _pretty(body[:MAX_BODY_BYTES]),
        "truncated": len(body) > MAX_BODY_BYTES,
    }
    folder = inbox_dir()
    folder.mkdir(parents=True, exist_ok=True)
    temporary = folder / f".{entry['id']}.tmp"
    temporary.write_text(json.dumps(entry))
    os.replace(temporary, folder / f"{entry['id']}.json")  # readers never see half a file
    for old in _files()[KEEP:]:
        old.unlink(missing_ok=True)
    return entry


def entries(limit: int = 50) -> list[dict]:
    found = []
    for path in _files()[:limit]:
        try:
            found.append(json.loads(path.read_text()))
        except (OSError, ValueError):  # removed or being replaced meanwhile
            continue
    return found


def clear() -> None:
    for path in _files():
        path.unlink(missing_ok=True)


def _files() -> list[Path]:
    folder = inbox_dir()
    if not folder.is_dir():
        return []
    return sorted(folder.glob("*.json"), reverse=True)


def _pretty(body: bytes) -> str:
    text = body.decode("utf-8", errors="replace")
    try:
        return json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except ValueError:
        return text
