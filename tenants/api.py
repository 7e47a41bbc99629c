"""Operator endpoints for the API-key cache (staff only, through the admin session)."""

from django.db import transaction
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.authentication import SessionAuthentication
from rest_framework.response import Response
from rest_framework.views import APIView

from tenants import keycache
from tenants.models import ApiKey, Tenant
from tenants.permissions import IsStaff
from tenants.scoping import tenant_get_or_404, tenant_queryset
from tenants.services import apikey_cache_invalidate_all, apikey_create, apikey_revoke

CacheStatsSerializer = inline_serializer(
    "ApiKeyCacheStats",
    {
        "enabled": serializers.BooleanField(),
        "ttlSeconds": serializers.IntegerField(),
        "size": serializers.IntegerField(),
        "hits": serializers.IntegerField(),
        "misses": serializers.IntegerField(),
        "hitRate": serializers.FloatField(allow_null=True),
        "scope": serializers.DictField(),
    },
)


class StaffSessionAuthentication(SessionAuthentication):
    """Staff endpoints take the admin session only. No HTTP Basic: every Basic request ran a
    full password hash (~0.6 s of CPU) outside the login throttle, so anyone could tie up the
    workers or guess passwords unthrottled. The header below keeps a missing login a 401."""

    def authenticate_header(self, request):
        return 'Session realm="atlas-admin"'


class _StaffView(APIView):
    authentication_classes = [StaffSessionAuthentication]
    permission_classes = [IsStaff]
    throttle_classes = []


class CacheStatsView(_StaffView):
    @extend_schema(tags=["auth"], responses=CacheStatsSerializer, summary="API-key cache stats")
    def get(self, request):
        digests = list(ApiKey.objects.values_list("key_hash", flat=True))
        return Response(keycache.cache_stats(digests))


class InvalidateCacheView(_StaffView):
    @extend_schema(
        tags=["auth"],
        request=None,
        responses=inline_serializer(
            "CacheInvalidated", {"invalidated": serializers.IntegerField()}
        ),
        summary="Drop every cached API-key verification",
    )
    def post(self, request):
        return Response({"invalidated": apikey_cache_invalidate_all()})


# --- Tenant's own keys (secret key): list, create (rotation), revoke ------------------------


class ApiKeyOutSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    kind = serializers.CharField()
    name = serializers.CharField()
    prefix = serializers.CharField()
    allowedOrigins = serializers.ListField(child=serializers.CharField(), source="allowed_origins")
    createdAt = serializers.DateTimeField(source="created_at")
    lastUsedAt = serializers.DateTimeField(source="last_used_at", allow_null=True)
    revokedAt = serializers.DateTimeField(source="revoked_at", allow_null=True)


class ApiKeyCreatedSerializer(ApiKeyOutSerializer):
    key = serializers.CharField(help_text="The full key: shown only in this response.")


class ApiKeyInSerializer(serializers.Serializer):
    kind = serializers.ChoiceField(choices=ApiKey.Kind.values)
    name = serializers.CharField(max_length=100, required=False, allow_blank=True, default="")
    allowedOrigins = serializers.ListField(
        child=serializers.CharField(max_length=255), required=False, default=list, max_length=50
    )


class ApiKeyListView(APIView):
    @extend_schema(tags=["auth"], responses=ApiKeyOutSerializer(many=True), summary="List keys")
    def get(self, request):
        keys = tenant_queryset(ApiKey, tenant_id=request.tenant_id).order_by("-created_at")
        return Response(ApiKeyOutSerializer(keys, many=True).data)

    @extend_schema(
        tags=["auth"],
        request=ApiKeyInSerializer,
        responses={201: ApiKeyCreatedSerializer},
        summary="Create a key (rotation: the old key works until revoked)",
    )
    def post(self, request):
        data = ApiKeyInSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        tenant = Tenant.objects.get(pk=request.tenant_id)
        with transaction.atomic():
            key, raw = apikey_create(
                tenant=tenant,
                kind=data.validated_data["kind"],
                name=data.validated_data["name"],
                allowed_origins=data.validated_data["allowedOrigins"],
            )
        body = ApiKeyOutSerializer(key).data
        body["key"] = raw
        return Response(body, status=201)


class ApiKeyRevokeView(APIView):
    @extend_schema(tags=["auth"], request=None, responses=ApiKeyOutSerializer, summary="Revoke")
    def post(self, request, key_id):
        key = tenant_get_or_404(ApiKey, tenant_id=request.tenant_id, pk=key_id)
        with transaction.atomic():
            apikey_revoke(key=key)
        key.refresh_from_db()
        return Response(ApiKeyOutSerializer(key).data)
