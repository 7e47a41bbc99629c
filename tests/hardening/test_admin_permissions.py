"""Staff can do only what their permissions say.

Walks every action of every registered ModelAdmin with a view-only staff user (every view_*
permission, nothing else): no action is offered, and POSTing each one anyway changes no row.
Then the actions' own permissions: each custom permission opens exactly its action, and every
changing action leaves a LogEntry."""

from __future__ import annotations

import re

import pytest
from django.contrib import admin
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.contenttypes.models import ContentType
from django.urls import reverse

from outbox.models import Delivery
from tenants.models import ApiKey
from tests.conftest import client_for
from tests.hardening.admin_world import (
    build_world,
    changed_tables,
    cookie_messages,
    snapshot,
    staff_user,
)

pytestmark = pytest.mark.django_db


def _changelist(model) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")


ACTIONS = sorted(
    (model._meta.label, name)
    for model, model_admin in admin.site._registry.items()
    for _func, name, _description in model_admin._get_base_actions()
)
# A whole key (prefix, underscore, secret part); a prefix alone (sk_abcd1234) is public.
FULL_KEY = re.compile(r"(?:sk|pk)_[A-Za-z0-9]{8}_[A-Za-z0-9_-]{20,}")
MODELS = {model._meta.label: model for model in admin.site._registry}


@pytest.fixture
def world(settings, tmp_path):
    settings.OUTBOX_ALLOWED_TARGET_NETWORKS = ["127.0.0.0/8"]  # the world's target URL
    settings.UPLOADS_STAGING_DIR = tmp_path / "staging"
    settings.UPLOADS_STORAGE_DIR = tmp_path / "attachments"
    settings.STRIPE_SECRET_KEY = "sk_test_atlas"
    settings.STRIPE_API_BASE = "http://127.0.0.1:9"  # nothing listens: no call leaves
    settings.STRIPE_TIMEOUT_SECONDS = 0.5
    settings.STRIPE_MAX_NETWORK_RETRIES = 0
    return build_world()


@pytest.fixture
def viewer_client(client, world):
    client.force_login(staff_user("viewer", view_all=True))
    return client


def _offered_actions(response) -> list[str]:
    form = response.context["action_form"]
    if form is None:
        return []
    return [value for value, _label in form.fields["action"].choices if value]


def test_view_only_user_is_offered_no_action_anywhere(viewer_client):
    offered = {}
    for label, model in MODELS.items():
        response = viewer_client.get(_changelist(model))
        assert response.status_code == 200, label
        if actions := _offered_actions(response):
            offered[label] = actions
    assert offered == {}


@pytest.mark.parametrize(("label", "action"), ACTIONS)
def test_view_only_user_cannot_run_an_action_by_posting_it(viewer_client, label, action):
    model = MODELS[label]
    pks = [str(pk) for pk in model._default_manager.values_list("pk", flat=True)[:50]]
    if action != "delete_selected":
        assert pks, f"add a {label} row to build_world(): its action {action!r} needs one"
    before = snapshot()
    response = viewer_client.post(
        _changelist(model),
        {"action": action, "_selected_action": pks or ["0"], "index": "0", "select_across": "0"},
    )
    assert response.status_code in (200, 302, 403)
    assert changed_tables(before, snapshot()) == []
    assert not FULL_KEY.search(cookie_messages(response))
    assert not FULL_KEY.search(response.content.decode())


def test_view_only_user_gets_no_working_secret_key_for_another_tenant(viewer_client, world):
    beta = world["beta"]
    keys_before = ApiKey.objects.filter(tenant=beta).count()
    response = viewer_client.post(
        _changelist(type(beta)),
        {"action": "create_secret_key", "_selected_action": [str(beta.pk)], "index": "0"},
    )
    leaked = FULL_KEY.findall(cookie_messages(response) + response.content.decode())
    working = [key for key in leaked if client_for(key).get("/api/keys").status_code == 200]
    assert working == []
    assert ApiKey.objects.filter(tenant=beta).count() == keys_before


def test_view_only_user_cannot_revoke_cancel_or_pause(viewer_client, world):
    target, deliveries = world["target"], world["deliveries"]
    key = ApiKey.objects.filter(tenant=world["beta"]).first()
    for model, action, pk in [
        (ApiKey, "revoke", key.pk),
        (Delivery, "cancel", deliveries[1].pk),
        (type(target), "pause", target.pk),
    ]:
        viewer_client.post(
            _changelist(model), {"action": action, "_selected_action": [str(pk)], "index": "0"}
        )
    key.refresh_from_db()
    target.refresh_from_db()
    assert key.revoked_at is None
    assert Delivery.objects.get(pk=deliveries[1].pk).status == Delivery.Status.PENDING
    assert target.paused_at is None


@pytest.mark.parametrize(
    ("permission", "label", "offered"),
    [
        (
            "tenants.create_apikey",
            "tenants.Tenant",
            {"create_secret_key", "create_publishable_key"},
        ),
        ("tenants.revoke_apikey", "tenants.ApiKey", {"revoke"}),
        ("outbox.requeue_delivery", "outbox.Delivery", {"requeue_now"}),
        ("outbox.cancel_delivery", "outbox.Delivery", {"cancel"}),
        ("outbox.requeue_delivery", "outbox.OutboxEvent", {"requeue_now"}),
        ("outbox.pause_target", "outbox.Target", {"pause", "resume"}),
        ("outbox.reset_target_circuit", "outbox.Target", {"reset_circuit"}),
        ("outbox.send_target_test", "outbox.Target", {"send_test_event"}),
        ("outbox.replay_target", "outbox.Target", {"replay"}),
        ("uploads.retry_attachment", "uploads.Attachment", {"retry_now"}),
        ("payments.reprocess_stripeevent", "payments.StripeEvent", {"reprocess"}),
        ("payments.reconcile_paymentsession", "payments.PaymentSession", {"reconcile_with_stripe"}),
        ("payments.close_stripe_circuit", "payments.CircuitBreakerState", {"close_circuit"}),
    ],  # fmt: skip
)
def test_each_custom_permission_opens_exactly_its_actions(
    client, world, permission, label, offered
):
    client.force_login(staff_user("operator", permission, view_all=True))
    response = client.get(_changelist(MODELS[label]))
    assert set(_offered_actions(response)) == offered


def _log_entries(model) -> list[LogEntry]:
    content_type = ContentType.objects.get_for_model(model)
    return list(LogEntry.objects.filter(content_type=content_type).order_by("object_id"))


def test_requeue_writes_a_log_entry_per_row_with_who_and_how_many(client, world):
    operator = staff_user("requeuer", "outbox.requeue_delivery", view_all=True)
    client.force_login(operator)
    dead, pending = world["deliveries"]
    response = client.post(
        _changelist(Delivery),
        {
            "action": "requeue_now",
            "_selected_action": [str(dead.pk), str(pending.pk)],
            "index": "0",
        },
    )
    assert response.status_code == 302
    assert Delivery.objects.get(pk=dead.pk).status == Delivery.Status.PENDING
    entries = _log_entries(Delivery)
    assert sorted(e.object_id for e in entries) == sorted([str(dead.pk), str(pending.pk)])
    for entry in entries:
        assert entry.user_id == operator.pk and entry.action_flag == CHANGE
        assert "requeue_now" in entry.change_message and "2 selected" in entry.change_message
    history = client.get(reverse("admin:outbox_delivery_history", args=[dead.pk]))
    assert "requeue_now" in history.content.decode()


def test_revoke_writes_a_log_entry(client, world):
    operator = staff_user("revoker", "tenants.revoke_apikey", view_all=True)
    client.force_login(operator)
    key = ApiKey.objects.filter(tenant=world["beta"], kind="secret").get()
    client.post(
        _changelist(ApiKey), {"action": "revoke", "_selected_action": [str(key.pk)], "index": "0"}
    )
    key.refresh_from_db()
    assert key.revoked_at is not None
    [entry] = _log_entries(ApiKey)
    assert entry.object_id == str(key.pk) and entry.user_id == operator.pk
    assert "revoke" in entry.change_message and "1 changed" in entry.change_message


def test_system_check_refuses_an_action_without_a_permission():
    from django.contrib.admin import AdminSite, ModelAdmin

    from core.admin import check_actions_declare_permissions
    from tenants.models import Tenant

    assert check_actions_declare_permissions() == []

    @admin.action(description="Does something")
    def undeclared(modeladmin, request, queryset):
        pass

    class CarelessAdmin(ModelAdmin):
        actions = [undeclared]

    site = AdminSite(name="careless")
    site.register(Tenant, CarelessAdmin)
    [error] = check_actions_declare_permissions(site)
    assert error.id == "atlas.E001" and "undeclared" in error.msg
