"""/demo/inbox (the webhook inspector) and /demo/realtime-token, on in the demo run only.

Both show the demo tenant's events to anyone who can reach the server, so they answer 404
unless ATLAS_DEMO_MODE is on (`make run` turns it on for the processes it starts).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from django.conf import settings
from django.http import Http404, JsonResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from core.errors import DomainError
from ops.demo import inbox
from outbox import selectors as outbox_selectors
from outbox import services as outbox_services
from outbox.models import Target
from tenants import rls
from tenants.services import apikey_authenticate

INBOX_TARGET = "inbox"


def demo_credentials() -> dict:
    try:
        return json.loads((settings.VAR_DIR / "demo-credentials.json").read_text())
    except (OSError, ValueError):
        return {}


def _demo_mode_only():
    if not settings.ATLAS_DEMO_MODE:
        raise Http404("The demo extras are on only in the demo run (ATLAS_DEMO_MODE).")


def inbox_target() -> Target | None:
    tenant_id = demo_credentials().get("tenant_id")
    if not tenant_id:
        return None
    try:
        # an anonymous request has no scope (row-level security): read as the demo tenant
        with rls.tenant_scope(tenant_id):
            return outbox_selectors.target_get(tenant_id=tenant_id, name=INBOX_TARGET)
    except (Target.DoesNotExist, DomainError, Http404):
        return None


def inbox_secrets() -> list[str]:
    """The demo inbox target's live signing secrets (the previous one during a rotation)."""
    target = inbox_target()
    if target is None:
        return []
    found = [target.secret]
    expires = target.previous_secret_expires_at
    if target.previous_secret and expires and expires > timezone.now():
        found.append(target.previous_secret)
    return found


@csrf_exempt
@require_http_methods(["GET", "POST"])
def inbox_view(request):
    _demo_mode_only()
    if request.method == "POST":  # a delivery: record it, whatever its signature says
        headers = {k.lower(): v for k, v in request.headers.items()}
        entry = inbox.record(request.body, headers, inbox_secrets())
        return JsonResponse({"received": entry["id"], "verified": entry["verified"]})
    target = inbox_target()
    return render(
        request,
        "demo/inbox.html",
        {"target_url": target.url if target else inbox_url(), "has_target": target is not None},
    )


@require_http_methods(["GET"])
def inbox_deliveries(request):
    _demo_mode_only()
    return JsonResponse({"deliveries": inbox.entries()})


@csrf_exempt  # mints a read-only credential for the demo tenant; changes nothing
@require_http_methods(["POST"])
def realtime_token(request):
    """What a customer's server does for its page: mint a realtime token with its secret key
    (never sent to the browser). Here the demo tenant's key, for all its events, 15 minutes."""
    _demo_mode_only()
    raw_key = demo_credentials().get("secret_key")
    if not raw_key:
        return JsonResponse({"error": {"code": "demo_not_set_up"}}, status=503)
    principal = apikey_authenticate(raw_key=raw_key)
    token, scope = outbox_services.realtime_token_create(
        tenant_id=principal.tenant_id, key_id=principal.key_id
    )
    return JsonResponse(
        {
            "token": token,
            "expiresAt": datetime.fromtimestamp(scope.expires_at, tz=UTC).isoformat(),
            "streamUrl": settings.ATLAS_REALTIME_BASE_URL.rstrip("/") + "/api/realtime/stream",
        }
    )


def inbox_url() -> str:
    """Where the demo inbox target delivers: this server, by its loopback address."""
    return settings.ATLAS_BASE_URL.rstrip("/") + "/demo/inbox"
