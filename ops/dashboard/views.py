"""The admin index with the dashboard on top (the normal app list stays below it).

Each app contributes its sections (core.ops.DashboardSection) and its per-tenant columns;
this view only asks for them, links every number and draws the charts.
"""

from __future__ import annotations

import uuid

from django.contrib import admin
from django.utils import timezone

from core.ops import atlas_app_configs
from ops import status
from ops.dashboard import charts, links
from tenants.models import Tenant

TENANTS_SHOWN = 50


def _tenant(request) -> Tenant | None:
    try:
        tenant_id = uuid.UUID(request.GET.get("tenant", ""))
    except ValueError:
        return None
    return Tenant.objects.filter(pk=tenant_id).first()


def tenants_overview(*, now) -> list[dict]:
    """One row per tenant (first TENANTS_SHOWN by name): the numbers to compare tenants by."""
    tenants = list(Tenant.objects.order_by("name")[:TENANTS_SHOWN])
    ids = [t.pk for t in tenants]
    rows = [{"tenant": tenant} for tenant in tenants]
    for config in atlas_app_configs():
        columns = config.tenant_overview(tenant_ids=ids, now=now)
        for row in rows:
            row.update(columns.get(row["tenant"].pk, {}))
    return rows


def dashboard_context(request) -> dict:
    now = timezone.now()
    tenant = _tenant(request)
    tenant_id = tenant.pk if tenant else None
    # Each section needs the permission to view its main list; a staff member without it
    # does not see the section at all (superusers see everything).
    sections = [
        section
        for config in atlas_app_configs()
        for section in config.dashboard_sections()
        if links.can_view(request, section.model)
    ]
    data = {s.name: s.build(tenant_id=tenant_id, now=now) for s in sections}
    if tenant is None and sections:
        data["per_tenant"] = tenants_overview(now=now)
    links.resolve(data, request)
    for section in sections:
        if section.chart is not None:
            spec = section.chart
            data[section.name]["svg"] = charts.stacked_bars(
                element_id=spec.element_id,
                title=spec.title,
                columns=data[section.name]["chart"],
                series=list(spec.series),
                rate_label=spec.rate_label,
            )
    context = {
        "now": now,
        "tenant": tenant,
        "tenant_choices": Tenant.objects.order_by("name")[:TENANTS_SHOWN] if sections else [],
        "sections": {s.name for s in sections},
        **data,
    }
    if request.user.is_superuser:
        findings = status.status_report(now=now, cluster_wait=0)  # a page must not wait
        context["status"] = {"level": status.overall(findings), "findings": findings}
    return context


def index(request):
    return admin.site.index(request, extra_context={"dashboard": dashboard_context(request)})
