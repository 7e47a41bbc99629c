"""Payments API: start a checkout, read a payment session, receive Stripe's webhooks."""

from __future__ import annotations

import re

from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.validators import URLValidator
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_field,
    inline_serializer,
)
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from core.api.errors import ApiError, error_response
from core.session_proof import proof_from_headers
from core.validation import EMAIL_REGEX
from payments import selectors
from payments.services.checkout import payment_checkout_create
from payments.services.webhooks import WebhookProcessingFailed, stripe_webhook_receive
from tenants import rls
from tenants.permissions import HasAnyKey

_EMAIL = re.compile(EMAIL_REGEX)


class CheckoutInSerializer(serializers.Serializer):
    sessionId = serializers.UUIDField(
        required=False, allow_null=True, help_text="The assessment session this payment unlocks."
    )
    email = serializers.CharField(max_length=254)
    firstName = serializers.CharField(max_length=200, trim_whitespace=False)
    formData = serializers.JSONField(required=False, default=dict)
    priceId = serializers.CharField(max_length=255, required=False, allow_null=True)
    amount = serializers.IntegerField(
        required=False, allow_null=True, help_text="Minor units (cents), 1 … 99,999,999."
    )
    currency = serializers.CharField(required=False, allow_null=True, max_length=10)
    productName = serializers.CharField(required=False, max_length=200, default="Assessment")
    successUrl = serializers.CharField(max_length=2000)
    cancelUrl = serializers.CharField(max_length=2000)

    def validate_email(self, value):
        if not _EMAIL.match(value):
            raise serializers.ValidationError("Not a valid email address.", code="invalid_email")
        return value

    def validate_firstName(self, value):
        if not value.strip():
            raise serializers.ValidationError("firstName is blank.", code="blank_first_name")
        return value.strip()

    def validate_amount(self, value):
        if value is not None and not 1 <= value <= 99_999_999:
            raise serializers.ValidationError(
                "amount must be between 1 and 99,999,999 minor units.", code="invalid_amount"
            )
        return value

    def _url(self, value):
        try:
            URLValidator(schemes=["https", "http"])(value)
        except DjangoValidationError as exc:
            raise serializers.ValidationError(
                "Must be an absolute http(s) URL.", code="invalid_url"
            ) from exc
        return value

    def validate_successUrl(self, value):
        return self._url(value)

    def validate_cancelUrl(self, value):
        return self._url(value)

    def validate_formData(self, value):
        if not isinstance(value, dict):
            raise serializers.ValidationError("formData must be a JSON object.", code="not_object")
        return value

    def validate_currency(self, value):
        if value is None:
            return value
        if not re.fullmatch(r"[A-Za-z]{3}", value):
            raise serializers.ValidationError(
                "currency must be a 3-letter ISO code.", code="invalid_currency"
            )
        return value.lower()

    def validate(self, attrs):
        has_price = bool(attrs.get("priceId"))
        has_amount = attrs.get("amount") is not None or attrs.get("currency") is not None
        if has_price and has_amount:
            raise serializers.ValidationError(
                "Send either priceId or amount+currency, not both.",
                code="price_and_amount_conflict",
            )
        if not has_price and (attrs.get("amount") is None or attrs.get("currency") is None):
            raise serializers.ValidationError(
                "Send priceId, or both amount and currency.", code="price_or_amount_required"
            )
        return attrs


class CheckoutOutSerializer(serializers.Serializer):
    paymentSessionId = serializers.UUIDField(source="pk")
    checkoutUrl = serializers.CharField(source="checkout_url")
    status = serializers.CharField()


class PaymentSessionOutSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    status = serializers.CharField()
    failureReason = serializers.SerializerMethodField(
        help_text="amount_mismatch when Stripe charged another price, amount or currency."
    )
    sessionId = serializers.UUIDField(source="assessment_session_id", allow_null=True)
    email = serializers.CharField()
    firstName = serializers.CharField(source="first_name")
    amount = serializers.IntegerField(allow_null=True)
    amountRefunded = serializers.IntegerField(source="amount_refunded")
    currency = serializers.CharField()
    priceId = serializers.CharField(source="price_id", allow_null=True)
    stripeCheckoutSessionId = serializers.CharField(source="stripe_checkout_session_id")
    stripePaymentIntentId = serializers.CharField(
        source="stripe_payment_intent_id", allow_null=True
    )
    checkoutUrl = serializers.CharField(source="checkout_url")
    livemode = serializers.BooleanField()
    createdAt = serializers.DateTimeField(source="created_at")
    updatedAt = serializers.DateTimeField(source="updated_at")
    completedAt = serializers.DateTimeField(source="completed_at", allow_null=True)

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_failureReason(self, obj) -> str | None:
        return obj.failure_reason or None


class CheckoutView(APIView):
    """Browsers may start a checkout with a publishable key, but only for a Stripe Price
    (priceId) on the tenant's allow-list: a free amount needs a secret key, so a visitor
    cannot choose what they pay."""

    permission_classes = [HasAnyKey]

    @extend_schema(
        tags=["payments"],
        summary="Start a Stripe Checkout",
        request=CheckoutInSerializer,
        responses={
            201: CheckoutOutSerializer,
            200: OpenApiResponse(CheckoutOutSerializer, "Replayed (same Idempotency-Key)"),
            400: OpenApiResponse(
                description="price_not_allowed (priceId not on the tenant's allow-list), "
                "invalid_email, blank_first_name, not_object, invalid_currency, "
                "invalid_amount, invalid_url, price_or_amount_required, "
                "price_and_amount_conflict, validation_error, stripe_invalid_request"
            ),
            402: OpenApiResponse(description="stripe_card_error"),
            403: OpenApiResponse(description="secret_key_required_for_amount (publishable key)"),
            404: OpenApiResponse(description="assessment_session_not_found"),
            422: OpenApiResponse(description="idempotency_key_reused"),
            502: OpenApiResponse(
                description="stripe_unavailable (5xx), stripe_unreachable, "
                "stripe_authentication_failed"
            ),
            503: OpenApiResponse(
                description="stripe_circuit_open (details.retryAfterSeconds), "
                "stripe_rate_limited, payments_not_configured"
            ),
            504: OpenApiResponse(description="stripe_timeout"),
        },
        parameters=[
            OpenApiParameter(
                "Idempotency-Key",
                str,
                OpenApiParameter.HEADER,
                required=False,
                description="Retrying with the same key returns the same checkout (200).",
            )
        ],
    )
    def post(self, request):
        serializer = CheckoutInSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        if data.get("amount") is not None and not request.auth.is_secret:
            raise ApiError(
                "secret_key_required_for_amount",
                "A publishable key may only start a checkout for a priceId.",
                status_code=403,
            )
        idempotency_key = request.headers.get("Idempotency-Key") or None
        if idempotency_key is not None and len(idempotency_key) > 255:
            raise ApiError("invalid_idempotency_key", "Idempotency-Key is longer than 255.")
        row, replayed = payment_checkout_create(
            tenant_id=request.tenant_id,
            email=data["email"],
            first_name=data["firstName"],
            form_data=data.get("formData") or {},
            assessment_session_id=data.get("sessionId"),
            price_id=data.get("priceId") or None,
            amount=data.get("amount"),
            currency=data.get("currency"),
            product_name=data.get("productName") or "Assessment",
            success_url=data["successUrl"],
            cancel_url=data["cancelUrl"],
            idempotency_key=idempotency_key,
            session_proof=proof_from_headers(request.headers, is_secret=request.auth.is_secret),
        )
        response = Response(
            CheckoutOutSerializer(row).data,
            status=status.HTTP_200_OK if replayed else status.HTTP_201_CREATED,
        )
        if replayed:
            response["Idempotent-Replayed"] = "true"
        return response


class PaymentSessionView(APIView):
    @extend_schema(
        tags=["payments"], summary="A payment session", responses=PaymentSessionOutSerializer
    )
    def get(self, request, payment_session_id):
        row = selectors.payment_session_get(
            tenant_id=request.tenant_id, payment_session_id=payment_session_id
        )
        return Response(PaymentSessionOutSerializer(row).data)


class StripeWebhookView(APIView):
    """Stripe calls this; it has no API key: the Stripe-Signature over the raw body is the
    authentication. 200 = stored and processed (or a duplicate); 400 = refused, nothing
    stored; 500 = stored, processing failed (recorded), Stripe retries."""

    authentication_classes: list = []
    permission_classes: list = []
    throttle_classes: list = []

    @extend_schema(
        tags=["payments"],
        summary="Stripe webhook endpoint",
        request={"application/json": OpenApiTypes.OBJECT},
        parameters=[
            OpenApiParameter(
                "Stripe-Signature",
                str,
                OpenApiParameter.HEADER,
                required=True,
                description="t=<unix time>,v1=<HMAC-SHA256 of '<t>.<raw body>'> (Stripe's).",
            )
        ],
        responses={
            200: inline_serializer(
                "StripeWebhookAck",
                {
                    "received": serializers.BooleanField(),
                    "duplicate": serializers.BooleanField(),
                    "status": serializers.CharField(),
                },
            ),
            400: OpenApiResponse(
                description="missing_signature, invalid_signature, stale_signature, "
                "malformed_event: nothing stored"
            ),
            500: OpenApiResponse(
                description="webhook_processing_failed: stored, failure recorded, Stripe retries"
            ),
            503: OpenApiResponse(description="webhook_not_configured"),
        },
    )
    # The tenant is known only once the signed event is read (its payment session's tenant):
    # the lookup and the state machine run across tenants, as Stripe is no tenant's client.
    @rls.system_scope("stripe webhook")
    def post(self, request):
        body = request.body  # the raw bytes: the signature covers them exactly
        try:
            event, duplicate = stripe_webhook_receive(
                body=body, signature=request.headers.get("Stripe-Signature")
            )
        except WebhookProcessingFailed as exc:
            return error_response(
                "webhook_processing_failed",
                "The event was stored but processing failed; it was recorded and Stripe "
                "will retry.",
                500,
                details={"eventId": exc.event.stripe_event_id},
            )
        return Response({"received": True, "duplicate": duplicate, "status": event.status})
