"""What an app contributes to the operations console, and the one way it is found.

Each of our apps has an `AppConfig` that subclasses `AtlasAppConfig` and overrides the hooks
it needs (usually by delegating to its own `ops.py`). The `ops` app asks every installed
`AtlasAppConfig` for its contributions: no list of app names, no import by name.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from importlib import import_module
from typing import Any

from django.apps import AppConfig, apps

OK, DEGRADED, DOWN = "ok", "degraded", "down"


@dataclass
class Check:
    """One line of GET /health."""

    name: str
    ok: bool
    critical: bool
    detail: dict = field(default_factory=dict)


@dataclass
class Finding:
    """One line of the operator's status (atlas_status and the dashboard banner)."""

    name: str
    level: str  # OK, DEGRADED or DOWN
    summary: str
    lines: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ScheduleSpec:
    """A django-q2 schedule, created idempotently after migrate."""

    name: str
    func: str  # dotted path of a task in <app>/tasks.py
    minutes: int  # interval; django-q2 looks at schedules about every 30 s
    why: str
    kwargs: dict | None = None


@dataclass(frozen=True)
class ChartSpec:
    """A stacked-bar chart drawn from a section's `chart` list (one column per day)."""

    element_id: str
    title: str
    series: tuple[tuple[str, str, str], ...]  # (value key, legend, colour)
    rate_label: str


@dataclass(frozen=True)
class DashboardSection:
    """One section of the admin dashboard, shown to staff who may view `model`'s list."""

    name: str  # the template's key for the section's data
    model: str  # "app_label.modelname"
    build: Any  # (*, tenant_id, now) -> dict
    chart: ChartSpec | None = None


class AtlasAppConfig(AppConfig):
    """An app of ours. `ops_module` names the module holding its contributions; each is
    optional there:

    - `health_checks() -> list[Check]` for GET /health,
    - `status_findings(*, now) -> list[Finding]` for atlas_status and the dashboard banner,
    - `metric_families() -> list` of prometheus_client families read at scrape time,
    - `SCHEDULES: list[ScheduleSpec]` for django-q2,
    - `SECTIONS: list[DashboardSection]` for the admin dashboard,
    - `tenant_overview(*, tenant_ids, now) -> {tenant_id: {column: Figure}}` for its
      per-tenant table.
    """

    ops_module: str | None = None
    # Never picked as an app's config by itself (Django would see two configs in apps.py).
    default = False

    def _contribution(self, name: str):
        if self.ops_module is None:
            return None
        return getattr(import_module(self.ops_module), name, None)

    def _called(self, name: str, default, **kwargs):
        hook = self._contribution(name)
        return default if hook is None else hook(**kwargs)

    def health_checks(self) -> list[Check]:
        return self._called("health_checks", [])

    def status_findings(self, *, now: datetime) -> list[Finding]:
        return self._called("status_findings", [], now=now)

    def metric_families(self) -> Iterable[Any]:
        return self._called("metric_families", [])

    def schedules(self) -> list[ScheduleSpec]:
        return list(self._contribution("SCHEDULES") or [])

    def dashboard_sections(self) -> list[DashboardSection]:
        return list(self._contribution("SECTIONS") or [])

    def tenant_overview(self, *, tenant_ids: list, now: datetime) -> dict[Any, dict]:
        return self._called("tenant_overview", {}, tenant_ids=tenant_ids, now=now)


def atlas_app_configs() -> list[AtlasAppConfig]:
    return [c for c in apps.get_app_configs() if isinstance(c, AtlasAppConfig)]
