"""The admin index with the dashboard on top (the normal app list stays below it)."""

from __future__ import annotations

import uuid

from django.contrib import admin
from django.utils import timezone

from config.dashboard import charts, links, selectors, status
from tenants.models import Tenant

# Each section needs the permission to view its main list; a staff member without it does
# not see the section at all (superusers see everything).
SECTIONS = {
    "outbox": "outbox.delivery",
    "uploads": "uploads.attachment",
    "payments": "payments.paymentsession",
    "assessments": "assessments.assessmentsession",
}


def _tenant(request) -> Tenant | None:
    try:
        tenant_id = uuid.UUID(request.GET.get("tenant", ""))
    except ValueError:
        return None
    return Tenant.objects.filter(pk=tenant_id).first()


def dashboard_context(request) -> dict:
    now = timezone.now()
    tenant = _tenant(request)
    tenant_id = tenant.pk if tenant else None
    visible = {name for name, model in SECTIONS.items() if links.can_view(request, model)}
    builders = {
        "outbox": selectors.outbox_summary,
        "uploads": selectors.uploads_summary,
        "payments": selectors.payments_summary,
        "assessments": selectors.assessments_summary,
    }
    data = {name: builders[name](tenant_id=tenant_id, now=now) for name in sorted(visible)}
    if tenant is None and visible:
        data["per_tenant"] = selectors.tenants_overview(now=now)
    links.resolve(data, request)
    if "uploads" in data:
        data["uploads"]["svg"] = charts.stacked_bars(
            element_id="chart-uploads",
            title="Upload retry attempts per day",
            columns=data["uploads"]["chart"],
            series=[("succeeded", "stored", "#2e7d32"), ("failed", "failed", "#c62828")],
            rate_label="success rate",
        )
    if "assessments" in data:
        data["assessments"]["svg"] = charts.stacked_bars(
            element_id="chart-assessments",
            title="Assessment sessions started per day",
            columns=data["assessments"]["chart"],
            series=[
                ("completed", "completed", "#2e7d32"),
                ("abandoned", "abandoned", "#c62828"),
                ("open", "still open", "#9e9e9e"),
            ],
            rate_label="completion rate",
        )
    context = {
        "now": now,
        "tenant": tenant,
        "tenant_choices": Tenant.objects.order_by("name")[: selectors.TENANTS_SHOWN]
        if visible
        else [],
        "sections": visible,
        **data,
    }
    if request.user.is_superuser:
        findings = status.status_report(now=now, cluster_wait=0)  # a page must not wait
        context["status"] = {"level": status.overall(findings), "findings": findings}
    return context


def index(request):
    return admin.site.index(request, extra_context={"dashboard": dashboard_context(request)})
