"""The tenant's price allow-list over the API (secret keys only): list, add, remove.

A publishable key is refused (403 secret_key_required): the list says what a visitor may buy,
so only the tenant's server may change it.
"""

from __future__ import annotations

import re

from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from payments import selectors
from payments.models import PRICE_ID_REGEX
from payments.services.prices import allowed_price_add, allowed_price_remove
from tenants.permissions import HasSecretKey

_PRICE_ID = re.compile(PRICE_ID_REGEX)


class AllowedPriceInSerializer(serializers.Serializer):
    priceId = serializers.CharField(
        max_length=255, help_text="Stripe's price id (price_…): letters, digits, _ and -."
    )
    note = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")

    def validate_priceId(self, value):
        if not _PRICE_ID.match(value):
            raise serializers.ValidationError(
                "priceId must be a Stripe price id: letters, digits, _ and - only.",
                code="invalid_price_id",
            )
        return value


class AllowedPriceOutSerializer(serializers.Serializer):
    priceId = serializers.CharField(source="price_id")
    note = serializers.CharField()
    createdAt = serializers.DateTimeField(source="created_at")


class AllowedPriceListView(APIView):
    permission_classes = [HasSecretKey]

    @extend_schema(
        tags=["payments"],
        summary="The tenant's allowed prices",
        responses=AllowedPriceOutSerializer(many=True),
    )
    def get(self, request):
        rows = selectors.allowed_prices_list(tenant_id=request.tenant_id)
        return Response(AllowedPriceOutSerializer(rows, many=True).data)

    @extend_schema(
        tags=["payments"],
        summary="Allow a price for checkouts",
        request=AllowedPriceInSerializer,
        responses={
            201: AllowedPriceOutSerializer,
            200: OpenApiResponse(AllowedPriceOutSerializer, "Already allowed (unchanged)"),
            400: OpenApiResponse(description="invalid_price_id, validation_error"),
            403: OpenApiResponse(description="secret_key_required (publishable key)"),
        },
    )
    def post(self, request):
        serializer = AllowedPriceInSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        row, created = allowed_price_add(
            tenant_id=request.tenant_id,
            price_id=serializer.validated_data["priceId"],
            note=serializer.validated_data["note"],
        )
        return Response(
            AllowedPriceOutSerializer(row).data,
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )


class AllowedPriceView(APIView):
    permission_classes = [HasSecretKey]

    @extend_schema(
        tags=["payments"],
        summary="Stop allowing a price (checkouts already started are kept)",
        parameters=[OpenApiParameter("price_id", str, OpenApiParameter.PATH)],
        responses={
            204: OpenApiResponse(description="Removed"),
            403: OpenApiResponse(description="secret_key_required (publishable key)"),
            404: OpenApiResponse(description="not_found: not on this tenant's list"),
        },
    )
    def delete(self, request, price_id):
        allowed_price_remove(tenant_id=request.tenant_id, price_id=price_id)
        return Response(status=status.HTTP_204_NO_CONTENT)
