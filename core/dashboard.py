"""Helpers for the numbers apps put on the dashboard: day windows, rates, admin filters."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db.models import Count, QuerySet
from django.utils import timezone

CHART_DAYS = 7


def tenant_filter(tenant_id) -> dict:
    """The admin's own tenant list_filter (RelatedFieldListFilter on `tenant`)."""
    return {"tenant__id__exact": str(tenant_id)} if tenant_id else {}


def iso(moment: datetime) -> str:
    return moment.isoformat()


def day_start(moment: datetime) -> datetime:
    local = timezone.localtime(moment)
    return local.replace(hour=0, minute=0, second=0, microsecond=0)


def chart_days(now: datetime, days: int = CHART_DAYS) -> list[datetime]:
    """Start of each of the last `days` calendar days, oldest first (today included)."""
    today = day_start(now)
    return [today - timedelta(days=offset) for offset in range(days - 1, -1, -1)]


def day_filters(field: str, start: datetime) -> dict:
    return {f"{field}__gte": iso(start), f"{field}__lt": iso(start + timedelta(days=1))}


def rate(part: int, whole: int) -> float | None:
    return round(100.0 * part / whole, 1) if whole else None


def age(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60}m"


def per_tenant(queryset: QuerySet, tenant_ids, **conditions) -> dict:
    """{tenant_id: {name: count}} for each named condition, in one GROUP BY."""
    rows = (
        queryset.filter(tenant_id__in=tenant_ids)
        .values("tenant_id")
        .annotate(**{name: Count("pk", filter=q) for name, q in conditions.items()})
        .order_by()
    )
    return {row.pop("tenant_id"): row for row in rows}
