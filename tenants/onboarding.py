"""What other apps set up for every new tenant (e.g. the outbox's default targets).

tenants sits below the domain apps, so it cannot call them: an app with per-tenant defaults
registers one step here from its AppConfig.ready(), and tenant_create runs every step in
the tenant's own transaction. An explicit list, not a signal: the steps are the business
rule "a new tenant starts with these", and tenant_create is the only caller.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tenants.models import Tenant

TenantSetup = Callable[..., Any]  # (*, tenant: Tenant) -> anything

_steps: list[TenantSetup] = []


def tenant_setup_register(step: TenantSetup) -> None:
    """Add a step (once, however often ready() runs)."""
    if step not in _steps:
        _steps.append(step)


def tenant_setup_run(*, tenant: Tenant) -> None:
    for step in _steps:
        step(tenant=tenant)
