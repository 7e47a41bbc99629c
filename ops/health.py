"""GET /health: each dependency reported separately; 503 when a critical one fails.

Apps add their own checks through their ops module's `health_checks()` (the outbox reports
its lag and worker heartbeat there).

Only the database is critical: /health answers for this web process, and without PostgreSQL
it can neither answer nor store anything. A missing outbox worker or django-q2 cluster, or
outbox lag over OUTBOX_LAG_ALERT_SECONDS, is reported (`ok: false`, status "degraded", 200)
but not critical: the API still accepts work and events wait safely in PostgreSQL, so a load
balancer must not take web nodes out of rotation for it. `manage.py atlas_status` is the
check for those (exit 2 when no process delivers at all).
"""

from __future__ import annotations

import time

from django.conf import settings
from django.db import connection
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from core.ops import Check, atlas_app_configs
from tenants import rls


def database_check() -> Check:
    started = time.monotonic()
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:  # any failure to reach the database is "down"
        connection.close_if_unusable_or_obsolete()
        return Check("database", False, True, {"error": str(exc).splitlines()[0][:200]})
    return Check(
        "database", True, True, {"latencyMs": round((time.monotonic() - started) * 1000, 1)}
    )


def cluster_check() -> Check:
    """django-q2 writes a heartbeat of each running cluster into the shared cache."""
    try:
        from django_q.status import Stat

        clusters = [s for s in Stat.get_all() if s.status != "Stopped"]
    except Exception as exc:
        return Check("django_q_cluster", False, False, {"error": str(exc)[:200]})
    return Check(
        "django_q_cluster",
        bool(clusters),
        False,
        {"clusters": len(clusters), "name": settings.Q_CLUSTER["name"]},
    )


def all_checks() -> list[Check]:
    checks = [database_check()]
    if not checks[0].ok:
        return checks  # everything else needs the database
    checks.append(cluster_check())
    for config in atlas_app_configs():
        checks.extend(config.health_checks())
    return checks


class HealthView(APIView):
    authentication_classes = []
    permission_classes = []
    throttle_classes = []

    @extend_schema(
        tags=["ops"],
        auth=[],
        summary="Health of each dependency",
        responses={
            200: inline_serializer(
                "Health",
                {"status": serializers.CharField(), "checks": serializers.DictField()},
            ),
            503: inline_serializer(
                "HealthDown",
                {"status": serializers.CharField(), "checks": serializers.DictField()},
            ),
        },
    )
    @rls.system_scope("/health counts every tenant's backlog")
    def get(self, request):
        checks = all_checks()
        critical_down = any(not c.ok and c.critical for c in checks)
        degraded = any(not c.ok for c in checks)
        status_text = "down" if critical_down else "degraded" if degraded else "ok"
        body = {
            "status": status_text,
            "checks": {c.name: {"ok": c.ok, "critical": c.critical, **c.detail} for c in checks},
        }
        return Response(body, status=503 if critical_down else 200)
