"""Assessment API: one view per operation; inputs declared (validation and schema) in
assessments.inputs, writes in assessments.services, reads in assessments.selectors."""

from __future__ import annotations

from django.conf import settings
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from assessments import event_inputs, inputs, selectors, services
from assessments.auth import BeaconKeyAuthentication, session_proof
from core.api.errors import ApiError
from core.api.pagination import CursorPagination, paginated
from core.api.parsers import DepthSafeJSONParser, JSONParser
from tenants.permissions import HasAnyKey
from tenants.throttles import SUBMIT_BUCKET


class PlainTextJSONParser(JSONParser):
    """navigator.sendBeacon posts a string as text/plain (no CORS preflight): JSON inside."""

    media_type = "text/plain"


class EventsJSONParser(DepthSafeJSONParser):
    """Events are validated one by one (a NUL, a 1e999 or deep nesting in one event rejects
    that event alone), so the batch is parsed without the project-wide whole-body check."""


class EventsPlainTextParser(EventsJSONParser):
    media_type = "text/plain"


class VisitorSessionOut(serializers.Serializer):
    """What a publishable key sees of a session: never its email, first name or form data."""

    id = serializers.UUIDField()
    status = serializers.CharField()
    responses = serializers.JSONField()
    metadata = serializers.JSONField()
    createdAt = serializers.DateTimeField(source="created_at")
    updatedAt = serializers.DateTimeField(source="updated_at")
    completedAt = serializers.DateTimeField(source="completed_at", allow_null=True)
    abandonedAt = serializers.DateTimeField(source="abandoned_at", allow_null=True)
    lastActivityAt = serializers.DateTimeField(source="last_activity_at", allow_null=True)


class SessionOut(VisitorSessionOut):
    """What a secret key sees of a session."""

    email = serializers.CharField(allow_null=True)
    firstName = serializers.CharField(source="first_name", allow_null=True)
    formData = serializers.JSONField(source="form_data")


class SessionCreatedOut(SessionOut):
    """The 201 answer that created a session (fields as the key may see them)."""

    sessionToken = serializers.CharField(
        help_text="Only in this answer: keep it and send it as X-Session-Token on every later "
        "publishable-key call for this session."
    )


def session_data(request, session) -> dict:
    """The session as the caller's key may see it."""
    out = SessionOut if request.auth.is_secret else VisitorSessionOut
    return out(session).data


class SubmissionOut(serializers.Serializer):
    id = serializers.UUIDField()
    sessionId = serializers.UUIDField(source="session_id")
    answers = serializers.JSONField()
    result = serializers.JSONField(allow_null=True)
    metadata = serializers.JSONField()
    createdAt = serializers.DateTimeField(source="created_at")


EventsOut = inline_serializer(
    "AssessmentEventsOut",
    {
        "accepted": serializers.IntegerField(),
        "rejected": serializers.IntegerField(),
        "stored": serializers.BooleanField(),
        "errors": serializers.ListField(child=serializers.DictField()),
    },
)


SESSION_TOKEN_HEADER = OpenApiParameter(
    "X-Session-Token",
    OpenApiTypes.STR,
    location=OpenApiParameter.HEADER,
    required=False,
    description="With a publishable key: the sessionToken returned when the session was "
    "created (403 session_token_required / invalid_session_token without it).",
)


class _BrowserView(APIView):
    """Publishable keys welcome; a beacon may carry its key as ?key=pk_…"""

    authentication_classes = [BeaconKeyAuthentication]
    permission_classes = [HasAnyKey]


class SessionUpsertView(_BrowserView):
    parser_classes = [JSONParser, PlainTextJSONParser]

    @extend_schema(
        tags=["assessments"],
        request=inputs.SESSION_IN,
        parameters=[SESSION_TOKEN_HEADER],
        responses={200: SessionOut, 201: SessionCreatedOut},
        summary="Create or move a session forward (never backwards; safe out of order)",
        description="The 201 answer that creates a session carries `sessionToken` (once). "
        "With a publishable key a later call for the session needs it (X-Session-Token; a "
        "text/plain beacon may send it as the body field sessionToken) and the answer "
        "leaves out email, firstName and formData.",
    )
    def post(self, request):
        values = inputs.SESSION_IN.clean(request.data)
        proof = session_proof(request, beacon_body=True)
        upsert = services.session_upsert(tenant_id=request.tenant_id, proof=proof, **values)
        data = session_data(request, upsert.session)
        if upsert.token is not None:
            data = {**data, "sessionToken": upsert.token}
        return Response(data, status=201 if upsert.created else 200)


class SessionDetailView(_BrowserView):
    @extend_schema(
        tags=["assessments"],
        parameters=[SESSION_TOKEN_HEADER],
        responses=SessionOut,
        summary="A session of the tenant (publishable key: with X-Session-Token, no personal "
        "fields)",
    )
    def get(self, request, session_id: str):
        session_uuid = inputs.path_uuid(session_id, code="invalid_session_id", field="sessionId")
        session = selectors.session_get(
            tenant_id=request.tenant_id, session_id=session_uuid, proof=session_proof(request)
        )
        return Response(session_data(request, session))


class SessionAnswersView(_BrowserView):
    @extend_schema(
        tags=["assessments"],
        request=inputs.ANSWERS_IN,
        parameters=[SESSION_TOKEN_HEADER],
        responses=SessionOut,
        summary="Merge answers into the session atomically (one SQL UPDATE)",
    )
    def post(self, request, session_id: str):
        session_uuid = inputs.path_uuid(session_id, code="invalid_session_id", field="sessionId")
        values = inputs.ANSWERS_IN.clean(request.data)
        session = services.session_answers_merge(
            tenant_id=request.tenant_id,
            session_id=session_uuid,
            proof=session_proof(request),
            **values,
        )
        return Response(session_data(request, session))


class SubmitView(_BrowserView):
    throttle_bucket = SUBMIT_BUCKET  # publishable keys: its own per-visitor budget

    @extend_schema(
        tags=["assessments"],
        request=inputs.SUBMIT_IN,
        parameters=[SESSION_TOKEN_HEADER],
        responses={201: SubmissionOut, 200: SubmissionOut},
        summary="Submit once per submissionId (a replay returns the original response)",
    )
    def post(self, request):
        values = inputs.SUBMIT_IN.clean(request.data)
        submission, created = services.submission_create(
            tenant_id=request.tenant_id,
            body_hash=services.request_hash(request.data),
            proof=session_proof(request),
            **values,
        )
        response = Response(SubmissionOut(submission).data, status=201 if created else 200)
        if not created:
            response["Idempotent-Replayed"] = "true"
        return response


class SubmissionListView(APIView):
    """Secret key: server-side readers."""

    @extend_schema(
        tags=["assessments"],
        parameters=[OpenApiParameter("sessionId", OpenApiTypes.UUID, required=False)],
        responses=paginated(SubmissionOut),
        summary="Submissions of the tenant, newest first (cursor pagination)",
    )
    def get(self, request):
        session_id = request.query_params.get("sessionId")
        if session_id is not None:
            session_id = inputs.path_uuid(session_id, code="invalid_session_id", field="sessionId")
        queryset = selectors.submission_list(tenant_id=request.tenant_id, session_id=session_id)
        paginator = CursorPagination()
        page = paginator.paginate_queryset(queryset, request, view=self)
        return paginator.get_paginated_response(SubmissionOut(page, many=True).data)


class SubmissionDetailView(APIView):
    @extend_schema(tags=["assessments"], responses=SubmissionOut, summary="One submission")
    def get(self, request, submission_id: str):
        submission_uuid = inputs.path_uuid(
            submission_id, code="invalid_submission_id", field="submissionId"
        )
        submission = selectors.submission_get(
            tenant_id=request.tenant_id, submission_id=submission_uuid
        )
        return Response(SubmissionOut(submission).data)


class EventsView(_BrowserView):
    parser_classes = [EventsJSONParser, EventsPlainTextParser]

    @extend_schema(
        tags=["assessments"],
        request=event_inputs.EVENTS_IN,
        responses=EventsOut,
        summary="Analytics events, best-effort (also text/plain for sendBeacon)",
    )
    def post(self, request):
        limit_bytes = settings.ASSESSMENTS_EVENTS_MAX_REQUEST_BYTES
        if len(request.body) > limit_bytes:
            raise ApiError(
                "payload_too_large",
                f"At most {limit_bytes} bytes of events per request.",
                status_code=413,
            )
        events = event_inputs.EVENTS_IN.clean(request.data)["events"]
        valid, errors = event_inputs.events_clean(
            events, check_encoding=event_inputs.events_need_encoding_check(request.body)
        )
        stored, _inserted = services.events_store(tenant_id=request.tenant_id, events=valid)
        return Response(
            {
                "accepted": len(events) - len(errors),
                "rejected": len(errors),
                "stored": stored,
                "errors": errors,
            }
        )
