"""POST /api/realtime/tokens: a secret key (server side) mints a browser's realtime token."""

from __future__ import annotations

from datetime import UTC, datetime

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from core.errors import DomainError
from outbox.realtime import tokens

_TOKEN_IN = inline_serializer(
    "RealtimeTokenIn",
    {
        "topics": serializers.ListField(child=serializers.CharField(), required=False),
        "eventTypes": serializers.ListField(
            child=serializers.CharField(),
            required=False,
            help_text="Exact types, 'prefix.*' or '*'; none: every type.",
        ),
        "sessionId": serializers.UUIDField(
            required=False, help_text="Only events about this assessment session."
        ),
        "ttlSeconds": serializers.IntegerField(
            required=False, help_text="Default 900; outside 10–3600: 400 ttl_out_of_range."
        ),
    },
)
_TOKEN_OUT = inline_serializer(
    "RealtimeTokenOut",
    {"token": serializers.CharField(), "expiresAt": serializers.DateTimeField()},
)


class RealtimeTokenView(APIView):
    """Secret keys only (the default permission): a publishable key gets 403
    secret_key_required, so a web page cannot mint its own tokens."""

    @extend_schema(tags=["realtime"], request=_TOKEN_IN, responses={201: _TOKEN_OUT})
    def post(self, request):
        data = request.data
        if not isinstance(data, dict):
            raise DomainError("invalid_body", "The body must be a JSON object.")
        token, scope = tokens.token_create(
            tenant_id=request.tenant_id,
            key_id=request.api_key.key_id,
            topics=data.get("topics"),
            event_types=data.get("eventTypes"),
            session_id=data.get("sessionId"),
            ttl=data.get("ttlSeconds"),
        )
        expires = datetime.fromtimestamp(scope.expires_at, UTC).isoformat().replace("+00:00", "Z")
        return Response({"token": token, "expiresAt": expires}, status=status.HTTP_201_CREATED)
