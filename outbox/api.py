"""Outbox API: publish and inspect events, manage targets (secret keys only)."""

from __future__ import annotations

from django.db import transaction
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_field,
    inline_serializer,
)
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from core.api.pagination import CursorPagination, paginated
from core.errors import DomainError
from core.validation import check_storable
from outbox import conf, replay, routing, selectors, services
from outbox.models import Target


# Checked by outbox.routing (one code per field: invalid_event_types, invalid_payload_filter,
# invalid_permanent_statuses), so taken here as plain JSON; typed for the OpenAPI schema.
@extend_schema_field(
    {"type": "array", "items": {"type": "string"}, "example": ["assessment.submitted", "payment.*"]}
)
class EventTypesField(serializers.JSONField):
    pass


@extend_schema_field(
    {"type": "object", "additionalProperties": True, "nullable": True, "example": {"plan": "pro"}}
)
class PayloadFilterField(serializers.JSONField):
    pass


@extend_schema_field({"type": "array", "items": {"type": "integer"}, "example": [400, 401]})
class StatusListField(serializers.JSONField):
    pass


class EventIn(serializers.Serializer):
    eventType = serializers.CharField(max_length=100)
    topic = serializers.CharField(max_length=100)
    payload = serializers.JSONField()
    target = serializers.CharField(max_length=64, required=False, allow_null=True)
    idempotencyKey = serializers.CharField(max_length=255, required=False, allow_null=True)
    orderingKey = serializers.CharField(max_length=255, required=False, allow_null=True)


class AttemptOut(serializers.Serializer):
    number = serializers.IntegerField()
    outcome = serializers.CharField()
    statusCode = serializers.IntegerField(source="status_code", allow_null=True)
    durationMs = serializers.FloatField(source="duration_ms")
    error = serializers.CharField(help_text="connection_refused, timeout, tls_error, http_503…")
    responseExcerpt = serializers.CharField(
        source="response_excerpt", help_text="Up to 256 printable characters, public hosts only."
    )
    at = serializers.DateTimeField(source="created_at")


class DeliveryOut(serializers.Serializer):
    target = serializers.CharField(source="target.name")
    status = serializers.CharField()
    attempts = serializers.IntegerField()
    nextAttemptAt = serializers.DateTimeField(source="next_attempt_at")
    deliveredAt = serializers.DateTimeField(source="delivered_at", allow_null=True)
    lastError = serializers.CharField(source="last_error")


class DeliveryDetailOut(DeliveryOut):
    attemptLog = AttemptOut(source="attempt_rows", many=True)


class EventOut(serializers.Serializer):
    id = serializers.UUIDField()
    topic = serializers.CharField()
    eventType = serializers.CharField(source="event_type")
    payload = serializers.JSONField()
    idempotencyKey = serializers.CharField(source="idempotency_key")
    orderingKey = serializers.CharField(source="ordering_key", allow_null=True)
    occurredAt = serializers.DateTimeField(source="occurred_at")
    status = serializers.SerializerMethodField()
    deliveries = DeliveryOut(many=True, source="deliveries.all")

    def get_status(self, event) -> str:
        return selectors.event_status(deliveries=event.deliveries.all())


class EventDetailOut(EventOut):
    deliveries = DeliveryDetailOut(many=True, source="deliveries.all")


class TargetIn(serializers.Serializer):
    name = serializers.SlugField(max_length=64)
    kind = serializers.ChoiceField(choices=Target.Kind.values)
    # checked by the service (egress guard): one code, target_url_not_allowed, for any URL
    # that is not http(s) to a public address, however it is spelled
    url = serializers.CharField(max_length=2000, required=False, allow_blank=True)
    secret = serializers.CharField(max_length=100, required=False)
    timeoutSeconds = serializers.FloatField(
        min_value=0.1, max_value=conf.MAX_TARGET_TIMEOUT_SECONDS, required=False
    )
    maxAttempts = serializers.IntegerField(min_value=1, max_value=100, required=False)
    rateLimitPerSecond = serializers.FloatField(min_value=0.01, required=False)
    backoffBaseSeconds = serializers.IntegerField(min_value=1, required=False)
    backoffMaxSeconds = serializers.IntegerField(min_value=1, required=False)
    eventTypes = EventTypesField(
        required=False, help_text='Patterns: assessment.submitted, payment.*, * (default ["*"]).'
    )
    payloadFilter = PayloadFilterField(
        required=False, allow_null=True, help_text="Exact match on top-level payload fields."
    )
    permanentStatuses = StatusListField(
        required=False, help_text="Statuses that dead-letter at once (default: none)."
    )


class TargetRoutingIn(serializers.Serializer):
    eventTypes = EventTypesField(required=False)
    payloadFilter = PayloadFilterField(required=False, allow_null=True)
    permanentStatuses = StatusListField(required=False)


class TargetOut(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()
    kind = serializers.CharField()
    url = serializers.CharField()
    enabled = serializers.BooleanField(source="is_enabled")
    paused = serializers.SerializerMethodField()
    timeoutSeconds = serializers.FloatField(source="timeout_seconds")
    maxAttempts = serializers.IntegerField(source="max_attempts", allow_null=True)
    rateLimitPerSecond = serializers.FloatField(source="rate_limit_per_second", allow_null=True)
    circuitState = serializers.CharField(source="circuit_state")
    eventTypes = serializers.ListField(child=serializers.CharField(), source="event_types")
    payloadFilter = serializers.JSONField(source="payload_filter", allow_null=True)
    permanentStatuses = serializers.ListField(
        child=serializers.IntegerField(), source="permanent_statuses"
    )
    createdAt = serializers.DateTimeField(source="created_at")

    def get_paused(self, target) -> bool:
        return target.paused_at is not None


class TargetCreatedOut(TargetOut):
    secret = serializers.CharField()


class SecretOut(serializers.Serializer):
    secret = serializers.CharField()
    previousSecret = serializers.CharField(source="previous_secret", allow_blank=True)
    previousSecretExpiresAt = serializers.DateTimeField(
        source="previous_secret_expires_at", allow_null=True
    )


def _event_detail(request, event_id):
    event = selectors.event_get(tenant_id=request.tenant_id, event_id=event_id)
    return EventDetailOut(event).data


class EventPublishView(APIView):
    @extend_schema(tags=["outbox"], request=EventIn, responses={200: EventOut, 201: EventOut})
    def post(self, request):
        data = EventIn(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        routing.reserved_event_type_refuse(values["eventType"], values["topic"])
        with transaction.atomic():
            event, created = services.event_publish_created(
                tenant=request.tenant_id,
                event_type=values["eventType"],
                topic=values["topic"],
                payload=values["payload"],
                target=values.get("target") or None,
                idempotency_key=values.get("idempotencyKey") or None,
                ordering_key=values.get("orderingKey") or None,
            )
        return Response(_event_detail(request, event.id), status=201 if created else 200)


class EventListView(APIView):
    @extend_schema(
        tags=["outbox"],
        parameters=[
            OpenApiParameter("topic", str),
            OpenApiParameter("eventType", str),
            OpenApiParameter(
                "status",
                str,
                enum=list(selectors.EVENT_STATUSES),
                description="no_targets: no target was subscribed (no matching target); "
                "otherwise events with a delivery in that status.",
            ),
        ],
        responses=paginated(EventOut),
    )
    def get(self, request):
        status = request.query_params.get("status") or None
        if status is not None and status not in selectors.EVENT_STATUSES:
            raise DomainError(
                "invalid_status",
                f"status must be one of {', '.join(selectors.EVENT_STATUSES)}.",
                details={"allowed": list(selectors.EVENT_STATUSES)},
            )
        topic = request.query_params.get("topic")
        event_type = request.query_params.get("eventType")
        # NUL (or a lone surrogate) cannot be compared with a text column: 400, not 500
        check_storable({"topic": topic, "eventType": event_type}, "query")
        queryset = selectors.event_list(
            tenant_id=request.tenant_id, topic=topic, event_type=event_type, status=status
        )
        paginator = CursorPagination()
        page = paginator.paginate_queryset(queryset, request, view=self)
        return paginator.get_paginated_response(EventOut(page, many=True).data)


# /events: GET is EventListView.get, POST is EventPublishView.post. Composed by inheritance,
# not a function dispatcher: DRF keeps one Allow header, OPTIONS answer and 405 for the path,
# and the schema generator still sees both operations. (No docstring: it would become the
# operations' description in the OpenAPI schema.)
class EventsView(EventListView, EventPublishView):
    pass


class EventDetailView(APIView):
    @extend_schema(tags=["outbox"], responses=EventDetailOut)
    def get(self, request, event_id):
        return Response(_event_detail(request, event_id))


class TargetListView(APIView):
    @extend_schema(
        tags=["outbox"],
        responses=inline_serializer("TargetList", {"results": TargetOut(many=True)}),
    )
    def get(self, request):
        targets = selectors.target_list(tenant_id=request.tenant_id)
        return Response({"results": TargetOut(targets, many=True).data})


class TargetCreateView(APIView):
    @extend_schema(tags=["outbox"], request=TargetIn, responses={201: TargetCreatedOut})
    def post(self, request):
        data = TargetIn(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        target = services.target_create(
            tenant=request.tenant_id,
            name=v["name"],
            kind=v["kind"],
            url=v.get("url", ""),
            secret=v.get("secret"),
            timeout_seconds=v.get("timeoutSeconds", 10.0),
            max_attempts=v.get("maxAttempts"),
            rate_limit_per_second=v.get("rateLimitPerSecond"),
            backoff_base_seconds=v.get("backoffBaseSeconds"),
            backoff_max_seconds=v.get("backoffMaxSeconds"),
            event_types=v.get("eventTypes"),
            payload_filter=v.get("payloadFilter"),
            permanent_statuses=v.get("permanentStatuses"),
        )
        return Response(TargetCreatedOut(target).data, status=201)


# /targets: GET is TargetListView.get, POST is TargetCreateView.post (as EventsView).
class TargetsView(TargetListView, TargetCreateView):
    pass


class TargetSecretView(APIView):
    @extend_schema(tags=["outbox"], responses=SecretOut)
    def get(self, request, name):
        return Response(
            SecretOut(selectors.target_get(tenant_id=request.tenant_id, name=name)).data
        )


class TargetRotateSecretView(APIView):
    @extend_schema(tags=["outbox"], request=None, responses=SecretOut)
    def post(self, request, name):
        target = services.target_rotate_secret(tenant_id=request.tenant_id, name=name)
        return Response(SecretOut(target).data)


class TargetDetailView(APIView):
    @extend_schema(tags=["outbox"], responses=TargetOut)
    def get(self, request, name):
        return Response(
            TargetOut(selectors.target_get(tenant_id=request.tenant_id, name=name)).data
        )

    @extend_schema(tags=["outbox"], request=TargetRoutingIn, responses=TargetOut)
    def patch(self, request, name):
        target = selectors.target_get(tenant_id=request.tenant_id, name=name)  # 404 first
        data = TargetRoutingIn(data=request.data)
        data.is_valid(raise_exception=True)
        names = {
            "eventTypes": "event_types",
            "payloadFilter": "payload_filter",
            "permanentStatuses": "permanent_statuses",
        }
        changes = {names[key]: value for key, value in data.validated_data.items()}
        target = services.target_routing_update(target=target, **changes)
        return Response(TargetOut(target).data)


class ReplayIn(serializers.Serializer):
    since = serializers.DateTimeField()
    until = serializers.DateTimeField(required=False, help_text="Default: now.")
    status = serializers.CharField(
        required=False,
        allow_blank=True,
        help_text="dead, cancelled, delivered or retrying. Default: dead and cancelled, and "
        "the deliveries the target never had (back-fill, by its subscriptions).",
    )


class ReplayOut(serializers.Serializer):
    id = serializers.IntegerField()
    target = serializers.CharField(source="target.name")
    since = serializers.DateTimeField()
    until = serializers.DateTimeField()
    status = serializers.CharField()
    requeued = serializers.IntegerField()
    backfilled = serializers.IntegerField()
    count = serializers.SerializerMethodField()
    capped = serializers.SerializerMethodField()

    def get_count(self, row) -> int:
        return row.requeued + row.backfilled

    def get_capped(self, row) -> bool:
        return row.requeued + row.backfilled >= replay.MAX_DELIVERIES


class TargetReplayView(APIView):
    @extend_schema(
        tags=["outbox"],
        request=ReplayIn,
        parameters=[
            OpenApiParameter(
                "Idempotency-Key",
                str,
                OpenApiParameter.HEADER,
                description="Same key and body: the first answer again, nothing requeued twice.",
            )
        ],
        responses={
            202: ReplayOut,
            422: OpenApiResponse(description="idempotency_key_reused"),
        },
    )
    def post(self, request, name):
        target = selectors.target_get(tenant_id=request.tenant_id, name=name)  # 404 first
        data = ReplayIn(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        key = request.headers.get("Idempotency-Key") or None
        if key is not None and len(key) > 255:
            raise DomainError("invalid_idempotency_key", "Idempotency-Key is longer than 255.")
        row, _new = replay.target_replay(
            target=target,
            since=v["since"],
            until=v.get("until"),
            status=v.get("status") or None,
            idempotency_key=key,
            requested_by="api",
        )
        return Response(ReplayOut(row).data, status=202)
