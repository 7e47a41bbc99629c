"""Views that forget the tenant filter on purpose: the second wall alone must hold."""

from __future__ import annotations

import uuid

from django.db import DatabaseError, connection, transaction
from django.http import JsonResponse
from django.urls import path
from django.utils import timezone
from rest_framework.response import Response
from rest_framework.views import APIView

from assessments.models import AnalyticsEvent
from tests.tenants.rls_world import tenant_models


def _seen() -> dict:
    """Per table: the ORM's count (no filter) and the tenants raw SQL finds."""
    seen = {}
    with connection.cursor() as cursor:
        for model in tenant_models():
            table = model._meta.db_table
            cursor.execute(f"SELECT DISTINCT tenant_id::text FROM {table}")
            seen[table] = {
                "orm": model._default_manager.all().count(),
                "tenants": sorted(row[0] for row in cursor.fetchall() if row[0]),
            }
    return seen


class ForgetfulView(APIView):
    """An API-key request that reads with no tenant filter and writes another tenant's row."""

    def get(self, request):
        return Response({"seen": _seen(), "insertRefused": _insert_refused(request)})


def _insert_refused(request) -> str:
    other = request.GET.get("other")
    if not other:
        return ""
    try:
        with transaction.atomic():
            AnalyticsEvent.objects.create(
                tenant_id=uuid.UUID(other),
                message_id=str(uuid.uuid4()),
                name="forged",
                occurred_at=timezone.now(),
            )
    except DatabaseError as exc:
        return getattr(exc.__cause__, "sqlstate", "") or str(exc)
    return ""


def anonymous_view(request):
    """No key, no scope: what a forgotten filter shows a request nobody authenticated."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT current_user, current_setting('atlas.tenant_id', true), "
            "current_setting('atlas.scope', true)"
        )
        role, tenant_id, scope = cursor.fetchone()
    return JsonResponse({"seen": _seen(), "role": role, "tenantId": tenant_id, "scope": scope})


urlpatterns = [
    path("forgetful", ForgetfulView.as_view()),
    path("anonymous", anonymous_view),
]
