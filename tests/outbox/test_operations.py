"""Admin console, commands, health checks and schedules."""

import json
from datetime import timedelta
from io import StringIO

import pytest
import time_machine
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.utils import timezone

from ops.schedules import declared_schedules
from outbox.models import (
    CircuitTransition,
    Delivery,
    DeliveryAttempt,
    OutboxEvent,
    Target,
    WorkerHeartbeat,
)
from outbox.ops import health_checks
from tests.outbox.factories import make_target, publish
from tests.outbox.helpers import deliver_round

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client(client):
    user = User.objects.create_superuser("ops", "ops@example.test", "pw-123456")
    client.force_login(user)
    return client


def _dead(tenant, receiver, n=3, name="hook"):
    make_target(tenant, name, url=receiver.url, permanent_statuses=[400])
    receiver.answer = lambda r, i: (400, {}, "bad")
    publish(tenant, n=n, target=name)
    deliver_round()
    receiver.answer = None
    assert Delivery.objects.filter(status="dead", target__name=name).count() == n


def run(*args) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_requeue_dry_run_changes_nothing(tenant, receiver):
    _dead(tenant, receiver)
    assert "would requeue 3 dead deliveries" in run("outbox_requeue", "--dry-run")
    assert Delivery.objects.filter(status="dead").count() == 3


def test_requeue_puts_dead_deliveries_back_and_shows_progress(tenant, receiver):
    _dead(tenant, receiver)
    output = run("outbox_requeue", "--status", "dead", "--target", "hook")
    assert "3/3 (100%)" in output and "requeued 3 of 3" in output
    assert set(Delivery.objects.values_list("status", "attempts")) == {("pending", 0)}
    deliver_round()
    assert Delivery.objects.filter(status="delivered").count() == 3
    assert DeliveryAttempt.objects.count() == 6  # the old tries stay as evidence


def test_requeue_filters_by_target_and_since(tenant, receiver):
    _dead(tenant, receiver, n=2, name="a")
    _dead(tenant, receiver, n=2, name="b")
    assert "requeued 2 of 2" in run("outbox_requeue", "--target", "a")
    future = (timezone.now() + timedelta(hours=1)).isoformat()
    assert "requeued 0 of 0" in run("outbox_requeue", "--since", future)
    with pytest.raises(CommandError):
        run("outbox_requeue", "--since", "yesterday")


def test_requeue_filters_by_tenant_name_or_id(tenant, other_tenant, receiver):
    _dead(tenant, receiver, n=2, name="a")
    _dead(other_tenant, receiver, n=1, name="b")
    assert "would requeue 2 dead" in run("outbox_requeue", "--tenant", str(tenant.pk), "--dry-run")
    assert "requeued 1 of 1" in run("outbox_requeue", "--tenant", other_tenant.name)
    assert Delivery.objects.filter(status="dead", tenant=tenant).count() == 2
    with pytest.raises(CommandError, match="No tenant"):
        run("outbox_requeue", "--tenant", "no-such-tenant")


def test_stats_reports_lag_and_circuit_per_target(tenant, receiver):
    _dead(tenant, receiver, n=2)
    make_target(tenant, "slow", url=receiver.url)
    Target.objects.filter(name="slow").update(paused_at=timezone.now())
    publish(tenant, n=1, target="slow")
    output = run("outbox_stats")
    hook = next(line for line in output.splitlines() if " hook " in line)
    assert "closed" in hook and " 2 " in hook  # dead_24h
    data = json.loads(run("outbox_stats", "--json"))
    slow = next(t for t in data["targets"] if t["target"] == "slow")
    assert slow["pending"] == 1 and slow["paused"] is True and slow["lag_seconds"] >= 0


def test_prune_deletes_only_old_fully_delivered_events(tenant, receiver):
    make_target(tenant, url=receiver.url)
    with time_machine.travel(timezone.now() - timedelta(days=40), tick=False):
        old = publish(tenant, n=3)
        deliver_round()
        stuck = publish(tenant, n=1)[0]
        Delivery.objects.filter(event=stuck).update(status="dead")  # never delivered: kept
    publish(tenant, n=2)
    deliver_round()
    out = run("outbox_prune", "--older-than", "30", "--batch-size", "2")
    assert "pruned 2 events…" in out  # progress after the first batch
    assert "pruned 3 delivered events older than 30 days" in out
    assert "attempts of delivered deliveries older than 14 days" in out
    remaining = set(OutboxEvent.objects.values_list("id", flat=True))
    assert stuck.id in remaining and not remaining & {e.id for e in old}
    assert len(remaining) == 3


def test_admin_pages_and_filters_load(staff_client, tenant, receiver, monkeypatch):
    from outbox.delivery import egress

    monkeypatch.setattr(egress, "address_is_public", lambda address: True)  # excerpt kept
    _dead(tenant, receiver)
    event = OutboxEvent.objects.first()
    delivery = Delivery.objects.first()
    target = Target.objects.get()
    for url in [
        "/admin/outbox/outboxevent/",
        "/admin/outbox/outboxevent/?status=dead&age=24h",
        f"/admin/outbox/outboxevent/{event.pk}/change/",
        "/admin/outbox/delivery/?status__exact=dead&age=older-7d",
        f"/admin/outbox/delivery/{delivery.pk}/change/",
        "/admin/outbox/target/",
        f"/admin/outbox/target/{target.pk}/change/",
        "/admin/outbox/workerheartbeat/",
    ]:
        response = staff_client.get(url)
        assert response.status_code == 200, url
    page = staff_client.get("/admin/outbox/target/").content.decode()
    assert "0.0%" in page  # success rate 24 h: three permanent failures
    detail = staff_client.get(f"/admin/outbox/delivery/{delivery.pk}/change/").content.decode()
    assert "bad" in detail  # the attempt's response excerpt, inline
    event_page = staff_client.get(f"/admin/outbox/outboxevent/{event.pk}/change/")
    assert "http_400" in event_page.content.decode()  # attempts listed on the event too


def test_admin_requeue_and_cancel_actions(staff_client, tenant, receiver):
    _dead(tenant, receiver)
    ids = list(Delivery.objects.values_list("pk", flat=True))
    response = staff_client.post(
        "/admin/outbox/delivery/", {"action": "requeue_now", "_selected_action": ids}, follow=True
    )
    assert "3 deliveries requeued" in response.content.decode()
    staff_client.post("/admin/outbox/delivery/", {"action": "cancel", "_selected_action": ids})
    assert set(Delivery.objects.values_list("status", flat=True)) == {"cancelled"}


def test_admin_target_actions(staff_client, tenant, receiver):
    target = make_target(tenant, url=receiver.url)
    Target.objects.filter(pk=target.pk).update(
        circuit_state="open", circuit_failures=5, circuit_opened_at=timezone.now()
    )
    url = "/admin/outbox/target/"
    for action in ["pause", "resume", "reset_circuit", "send_test_event"]:
        staff_client.post(url, {"action": action, "_selected_action": [target.pk]})
    target.refresh_from_db()
    assert target.paused_at is None and target.circuit_state == "closed"
    assert CircuitTransition.objects.get().reason == "reset by staff"
    assert OutboxEvent.objects.exclude(topic="operator").get().event_type == "outbox.test"
    operator = OutboxEvent.objects.filter(topic="operator").order_by("seq")
    assert [e.event_type for e in operator] == [
        "target.paused",
        "target.recovered",
        "target.circuit_closed",
    ]


def test_health_reports_lag_and_worker_heartbeat(tenant, settings):
    settings.OUTBOX_LAG_ALERT_SECONDS = 60
    make_target(tenant)
    checks = {c.name: c for c in health_checks()}
    assert checks["outbox_lag"].ok and not checks["outbox_worker"].ok
    with time_machine.travel(timezone.now() - timedelta(minutes=5), tick=False):
        publish(tenant)
    WorkerHeartbeat.objects.create(
        worker_id="w1", started_at=timezone.now(), last_seen_at=timezone.now()
    )
    checks = {c.name: c for c in health_checks()}
    assert not checks["outbox_lag"].ok and checks["outbox_lag"].detail["lagSeconds"] >= 299
    assert checks["outbox_worker"].ok and checks["outbox_worker"].detail["workers"] == 1


def test_schedules_declare_sweep_every_minute_and_daily_prune():
    specs = {s.name: s for s in declared_schedules()}
    assert specs["outbox.sweep"].minutes == 1
    assert specs["outbox.prune"].minutes == 1440
