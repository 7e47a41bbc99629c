"""Assessment API: one view per operation; input checks in assessments.inputs, writes in
assessments.services, reads in assessments.selectors."""

from __future__ import annotations

import re

from django.conf import settings
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import parsers, serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from assessments import inputs, selectors, services
from assessments.auth import BeaconKeyAuthentication
from core.api.errors import ApiError
from core.api.pagination import CursorPagination, paginated
from core.api.parsers import JSONParser
from tenants.permissions import HasAnyKey


class PlainTextJSONParser(JSONParser):
    """navigator.sendBeacon posts a string as text/plain (no CORS preflight): JSON inside."""

    media_type = "text/plain"


class EventsJSONParser(parsers.JSONParser):
    """Events are validated one by one (a NUL in one event rejects that event alone), so the
    batch is parsed without the project-wide whole-body text check."""


class EventsPlainTextParser(EventsJSONParser):
    media_type = "text/plain"


class SessionOut(serializers.Serializer):
    id = serializers.UUIDField()
    status = serializers.CharField()
    email = serializers.CharField(allow_null=True)
    firstName = serializers.CharField(source="first_name", allow_null=True)
    formData = serializers.JSONField(source="form_data")
    responses = serializers.JSONField()
    metadata = serializers.JSONField()
    createdAt = serializers.DateTimeField(source="created_at")
    updatedAt = serializers.DateTimeField(source="updated_at")
    completedAt = serializers.DateTimeField(source="completed_at", allow_null=True)
    abandonedAt = serializers.DateTimeField(source="abandoned_at", allow_null=True)
    lastActivityAt = serializers.DateTimeField(source="last_activity_at", allow_null=True)


class SubmissionOut(serializers.Serializer):
    id = serializers.UUIDField()
    sessionId = serializers.UUIDField(source="session_id")
    answers = serializers.JSONField()
    result = serializers.JSONField(allow_null=True)
    metadata = serializers.JSONField()
    createdAt = serializers.DateTimeField(source="created_at")


SessionIn = inline_serializer(
    "AssessmentSessionIn",
    {
        "sessionId": serializers.UUIDField(),
        "status": serializers.ChoiceField(choices=services.Status.values),
        "email": serializers.EmailField(required=False, allow_null=True),
        "firstName": serializers.CharField(required=False, allow_null=True),
        "formData": serializers.DictField(required=False),
        "metadata": serializers.DictField(required=False),
    },
)
AnswersIn = inline_serializer(
    "AssessmentAnswersIn",
    {
        "questionId": serializers.CharField(required=False),
        "answer": serializers.JSONField(required=False),
        "answers": serializers.DictField(required=False),
    },
)
SubmitIn = inline_serializer(
    "AssessmentSubmitIn",
    {
        "submissionId": serializers.UUIDField(),
        "sessionId": serializers.UUIDField(),
        "answers": serializers.DictField(),
        "result": serializers.JSONField(required=False, allow_null=True),
        "metadata": serializers.DictField(required=False),
        "email": serializers.EmailField(required=False, allow_null=True),
        "firstName": serializers.CharField(required=False, allow_null=True),
    },
)
EventsOut = inline_serializer(
    "AssessmentEventsOut",
    {
        "accepted": serializers.IntegerField(),
        "rejected": serializers.IntegerField(),
        "stored": serializers.BooleanField(),
        "errors": serializers.ListField(child=serializers.DictField()),
    },
)


class _BrowserView(APIView):
    """Publishable keys welcome; a beacon may carry its key as ?key=pk_…"""

    authentication_classes = [BeaconKeyAuthentication]
    permission_classes = [HasAnyKey]


class SessionUpsertView(_BrowserView):
    parser_classes = [JSONParser, PlainTextJSONParser]

    @extend_schema(
        tags=["assessments"],
        request=SessionIn,
        responses={200: SessionOut, 201: SessionOut},
        summary="Create or move a session forward (never backwards; safe out of order)",
    )
    def post(self, request):
        data = inputs.body_object(request.data)
        session, created = services.session_upsert(
            tenant_id=request.tenant_id,
            session_id=inputs.uuid_value(
                data.get("sessionId"), code="invalid_session_id", field="sessionId"
            ),
            status=inputs.status_value(data.get("status")),
            email=inputs.email_value(data.get("email")),
            first_name=inputs.first_name_value(data.get("firstName")),
            form_data=inputs.optional_object(
                data.get("formData"), code="invalid_form_data", field="formData"
            ),
            metadata=inputs.optional_object(
                data.get("metadata"), code="invalid_metadata", field="metadata"
            ),
        )
        return Response(SessionOut(session).data, status=201 if created else 200)


def _path_uuid(value: str, code: str, field: str):
    return inputs.uuid_value(value, code=code, field=field)


class SessionDetailView(_BrowserView):
    @extend_schema(tags=["assessments"], responses=SessionOut, summary="A session of the tenant")
    def get(self, request, session_id: str):
        session_uuid = _path_uuid(session_id, "invalid_session_id", "sessionId")
        session = selectors.session_get(tenant_id=request.tenant_id, session_id=session_uuid)
        return Response(SessionOut(session).data)


class SessionAnswersView(_BrowserView):
    @extend_schema(
        tags=["assessments"],
        request=AnswersIn,
        responses=SessionOut,
        summary="Merge answers into the session atomically (one SQL UPDATE)",
    )
    def post(self, request, session_id: str):
        session_uuid = _path_uuid(session_id, "invalid_session_id", "sessionId")
        answers = inputs.answers_value(inputs.body_object(request.data))
        session = services.session_answers_merge(
            tenant_id=request.tenant_id, session_id=session_uuid, answers=answers
        )
        return Response(SessionOut(session).data)


class SubmitView(_BrowserView):
    @extend_schema(
        tags=["assessments"],
        request=SubmitIn,
        responses={201: SubmissionOut, 200: SubmissionOut},
        summary="Submit once per submissionId (a replay returns the original response)",
    )
    def post(self, request):
        data = inputs.body_object(request.data)
        submission_id = inputs.uuid_value(
            data.get("submissionId"), code="invalid_submission_id", field="submissionId"
        )
        session_id = inputs.uuid_value(
            data.get("sessionId"), code="invalid_session_id", field="sessionId"
        )
        answers = data.get("answers")
        if not isinstance(answers, dict):
            raise ApiError(
                "invalid_answers", "answers must be a JSON object.", details={"field": "answers"}
            )
        metadata = inputs.optional_object(
            data.get("metadata"), code="invalid_metadata", field="metadata"
        )
        result = data.get("result")
        if result is not None and not isinstance(result, dict):
            raise ApiError(
                "invalid_result", "result must be a JSON object.", details={"field": "result"}
            )
        if inputs.json_size([answers, result]) > settings.ASSESSMENTS_SUBMISSION_MAX_BYTES:
            raise ApiError(
                "submission_too_large",
                f"answers and result may be at most {settings.ASSESSMENTS_SUBMISSION_MAX_BYTES} "
                "bytes together.",
                status_code=413,
            )
        submission, created = services.submission_create(
            tenant_id=request.tenant_id,
            submission_id=submission_id,
            session_id=session_id,
            answers=answers,
            result=result,
            metadata=metadata,
            email=inputs.email_value(data.get("email")),
            first_name=inputs.first_name_value(data.get("firstName")),
            body_hash=services.request_hash(data),
        )
        response = Response(SubmissionOut(submission).data, status=201 if created else 200)
        if not created:
            response["Idempotent-Replayed"] = "true"
        return response


class SubmissionListView(APIView):
    """Secret key: server-side readers."""

    @extend_schema(
        tags=["assessments"],
        parameters=[OpenApiParameter("sessionId", str, required=False)],
        responses=paginated(SubmissionOut),
        summary="Submissions of the tenant, newest first (cursor pagination)",
    )
    def get(self, request):
        session_id = request.query_params.get("sessionId")
        if session_id is not None:
            session_id = _path_uuid(session_id, "invalid_session_id", "sessionId")
        queryset = selectors.submission_list(tenant_id=request.tenant_id, session_id=session_id)
        paginator = CursorPagination()
        page = paginator.paginate_queryset(queryset, request, view=self)
        return paginator.get_paginated_response(SubmissionOut(page, many=True).data)


class SubmissionDetailView(APIView):
    @extend_schema(tags=["assessments"], responses=SubmissionOut, summary="One submission")
    def get(self, request, submission_id: str):
        submission_uuid = _path_uuid(submission_id, "invalid_submission_id", "submissionId")
        submission = selectors.submission_get(
            tenant_id=request.tenant_id, submission_id=submission_uuid
        )
        return Response(SubmissionOut(submission).data)


class EventsView(_BrowserView):
    parser_classes = [EventsJSONParser, EventsPlainTextParser]

    @extend_schema(
        tags=["assessments"],
        request=inline_serializer(
            "AssessmentEventsIn", {"events": serializers.ListField(child=serializers.DictField())}
        ),
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
        data = inputs.body_object(request.data)
        events = data.get("events")
        if not isinstance(events, list):
            raise ApiError("invalid_events", "events must be a list.", details={"field": "events"})
        if len(events) > settings.ASSESSMENTS_EVENTS_MAX_PER_REQUEST:
            raise ApiError(
                "too_many_events",
                f"At most {settings.ASSESSMENTS_EVENTS_MAX_PER_REQUEST} events per request.",
                status_code=413,
            )
        # Re-encoding each event (size / NUL / surrogate checks) is the costliest step: skip it
        # when the whole body is within one event's limit and carries no escaped NUL or
        # surrogate (a lone one would make PostgreSQL refuse the whole batch).
        body = request.body
        check_encoding = (
            len(body) > settings.ASSESSMENTS_EVENT_MAX_BYTES
            or b"\\u0000" in body
            or re.search(rb"\\u[dD][89a-fA-F]", body) is not None
        )
        bounds = inputs.event_time_bounds()
        valid, errors, seen = [], [], set()
        for index, event in enumerate(events):
            try:
                cleaned = inputs.event_value(event, bounds=bounds, check_encoding=check_encoding)
            except inputs.EventRejected as rejected:
                errors.append({"index": index, "code": rejected.code})
                continue
            if cleaned["message_id"] not in seen:  # a duplicate is accepted, stored once
                seen.add(cleaned["message_id"])
                valid.append(cleaned)
        stored, _inserted = services.events_store(tenant_id=request.tenant_id, events=valid)
        return Response(
            {
                "accepted": len(events) - len(errors),
                "rejected": len(errors),
                "stored": stored,
                "errors": errors,
            }
        )
