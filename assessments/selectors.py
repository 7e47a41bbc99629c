"""Assessment reads (always through the tenant choke point, except operator-wide stats)."""

from __future__ import annotations

from datetime import timedelta

from django.db.models import Count, Q
from django.utils import timezone

from assessments.models import AssessmentSession, Submission
from core.session_proof import SessionProof
from tenants.scoping import tenant_get_or_404, tenant_queryset


def session_get(*, tenant_id, session_id, proof: SessionProof | None = None) -> AssessmentSession:
    """A session of the tenant (404 otherwise); with a `proof` (publishable key) only for the
    holder of its token (403)."""
    session = tenant_get_or_404(AssessmentSession, tenant_id=tenant_id, pk=session_id)
    if proof is not None:
        proof.check(session.token_hash)
    return session


def submission_get(*, tenant_id, submission_id) -> Submission:
    return tenant_get_or_404(Submission, tenant_id=tenant_id, pk=submission_id)


def submission_list(*, tenant_id, session_id=None):
    queryset = tenant_queryset(Submission, tenant_id=tenant_id)
    if session_id is not None:
        queryset = queryset.filter(session_id=session_id)
    return queryset


def session_stats(*, days: int, tenant_id=None) -> list[dict]:
    """Per-tenant counts of sessions created in the last `days` days (operator view: all
    tenants unless one is given)."""
    since = timezone.now() - timedelta(days=days)
    queryset = (
        tenant_queryset(AssessmentSession, tenant_id=tenant_id)
        if tenant_id
        else AssessmentSession.objects.all()
    )
    S = AssessmentSession.Status
    rows = (
        queryset.filter(created_at__gte=since)
        .values("tenant_id", "tenant__name")
        .annotate(
            total=Count("id"),
            started=Count("id", filter=Q(status=S.STARTED)),
            in_progress=Count("id", filter=Q(status=S.IN_PROGRESS)),
            completed=Count("id", filter=Q(status=S.COMPLETED)),
            abandoned=Count("id", filter=Q(status=S.ABANDONED)),
        )
        .order_by("tenant__name")
    )
    result = []
    for row in rows:
        row["completion_rate"] = row["completed"] / row["total"] if row["total"] else None
        result.append(row)
    return result
