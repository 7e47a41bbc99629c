"""tenant_create runs the setup steps other apps registered, in the tenant's transaction."""

import pytest

from tenants import onboarding
from tenants.models import Tenant
from tenants.services import tenant_create

pytestmark = pytest.mark.django_db


@pytest.fixture
def steps(monkeypatch):
    registered: list = []
    monkeypatch.setattr(onboarding, "_steps", registered)
    return registered


def test_each_registered_step_runs_once_for_a_new_tenant(steps):
    seen = []

    def step(*, tenant):
        seen.append(tenant.name)

    onboarding.tenant_setup_register(step)
    onboarding.tenant_setup_register(step)  # ready() may run twice: still one step
    tenant_create(name="Initech")
    assert seen == ["Initech"]


def test_a_failing_step_leaves_no_tenant(steps):
    def step(*, tenant):
        raise RuntimeError("defaults could not be created")

    onboarding.tenant_setup_register(step)
    with pytest.raises(RuntimeError):
        tenant_create(name="Initech")
    assert not Tenant.objects.filter(name="Initech").exists()


def test_the_outbox_registers_its_default_targets():
    from outbox.services import target_defaults_create

    assert target_defaults_create in onboarding._steps
