"""Outbox API: publish and inspect events, manage targets (secret keys only)."""

from __future__ import annotations

from django.db import transaction
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from core.api.pagination import CursorPagination, paginated
from outbox import conf, selectors, services
from outbox.models import Target


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


class TargetOut(serializers.Serializer):
    name = serializers.CharField()
    kind = serializers.CharField()
    url = serializers.CharField()
    enabled = serializers.BooleanField(source="is_enabled")
    paused = serializers.SerializerMethodField()
    timeoutSeconds = serializers.FloatField(source="timeout_seconds")
    maxAttempts = serializers.IntegerField(source="max_attempts", allow_null=True)
    rateLimitPerSecond = serializers.FloatField(source="rate_limit_per_second", allow_null=True)
    circuitState = serializers.CharField(source="circuit_state")
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
    @extend_schema(tags=["outbox"], responses=paginated(EventOut))
    def get(self, request):
        queryset = selectors.event_list(
            tenant_id=request.tenant_id,
            topic=request.query_params.get("topic"),
            event_type=request.query_params.get("eventType"),
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
