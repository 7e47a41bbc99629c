"""A known world of rows for the operations console, made with the apps' own factories."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission, User
from django.utils import timezone

from outbox.models import (
    ATTEMPT_BUCKETS,
    LATENCY_BUCKETS,
    Delivery,
    DeliveryAttempt,
    DeliveryStat,
    Target,
)
from outbox.selectors import minute_floor
from payments.models import PaymentSession
from tests.assessments.factories import SessionFactory
from tests.outbox.factories import make_target, publish
from tests.payments.factories import PaymentSessionFactory
from tests.uploads.factories import staged_attachment
from uploads.models import FinaliseAttempt, RetryLog


@pytest.fixture(autouse=True)
def _staging_in_tmp(settings, tmp_path):
    settings.UPLOADS_STAGING_DIR = tmp_path / "staging"


def stat_add(target, *, at=None, latency=None, **counts):
    """What the worker's record statement adds to the per-minute counters (DeliveryStat) for
    one attempt (`outcome`, `duration_ms`) and/or one settled delivery (`latency` seconds)."""
    minute = minute_floor(at or timezone.now())
    stat, _ = DeliveryStat.objects.get_or_create(
        target=target,
        minute=minute,
        defaults={
            "tenant_id": target.tenant_id,
            "duration_le": [0] * (len(ATTEMPT_BUCKETS) + 1),
            "latency_le": [0] * (len(LATENCY_BUCKETS) + 1),
        },
    )
    outcome, duration_ms = counts.pop("outcome", None), counts.pop("duration_ms", None)
    if outcome:
        stat.attempts += 1
        field = {"delivered": "attempts_delivered", "retry": "attempts_retry"}
        name = field.get(outcome, "attempts_permanent")
        setattr(stat, name, getattr(stat, name) + 1)
        stat.duration_ms_sum += duration_ms
        stat.duration_le = _cumulative_add(stat.duration_le, ATTEMPT_BUCKETS, duration_ms / 1000)
    if latency is not None:
        stat.latency_seconds_sum += latency
        stat.latency_le = _cumulative_add(stat.latency_le, LATENCY_BUCKETS, latency)
    for name, n in counts.items():  # delivered=1, dead=1
        setattr(stat, name, getattr(stat, name) + n)
    stat.save()
    return stat


def _cumulative_add(histogram, bounds, value):
    return [n + (value <= b) for n, b in zip(histogram, [*bounds, float("inf")], strict=True)]


def _attempt(delivery, outcome, duration_ms, number=1):
    stat_add(delivery.target, outcome=outcome, duration_ms=duration_ms)
    return DeliveryAttempt.objects.create(
        tenant_id=delivery.tenant_id,
        delivery=delivery,
        number=number,
        outcome=outcome,
        duration_ms=duration_ms,
        status_code=200 if outcome == "delivered" else 503,
    )


@pytest.fixture
def world(tenant, other_tenant):
    """Acme and Globex with known numbers (see the assertions in test_dashboard.py)."""
    now = timezone.now()
    # outbox — Acme: 4 deliveries to `hook`: 2 pending, 1 dead, 1 delivered; Globex: 1 pending
    hook = make_target(tenant, name="hook")
    publish(tenant, n=4, target="hook")
    acme = list(Delivery.objects.filter(tenant=tenant).order_by("id"))
    Delivery.objects.filter(pk=acme[2].pk).update(status="dead", attempts=8)
    Delivery.objects.filter(pk=acme[3].pk).update(status="delivered", delivered_at=now, attempts=1)
    _attempt(acme[3], "delivered", 120.0)
    stat_add(hook, delivered=1, latency=0.0)
    _attempt(acme[2], "retry", 900.0)
    _attempt(acme[2], "permanent", 40.0, number=2)
    slack = make_target(other_tenant, name="alerts", kind="slack", url="http://127.0.0.1:9/s")
    publish(other_tenant, n=1, target="alerts")
    Target.objects.filter(pk=slack.pk).update(circuit_state="open", circuit_opened_at=now)

    # uploads — Acme: 2 pending, 1 failed; Globex: 1 pending; retry attempts today
    a1 = staged_attachment(tenant)
    staged_attachment(tenant)
    staged_attachment(tenant, status="failed", next_retry_at=None, attempts=8)
    staged_attachment(other_tenant)
    run = RetryLog.objects.create(
        source="scheduled", started_at=now, finished_at=now, attempted=4, succeeded=3, failed=1
    )
    for ok in (True, True, True, False):
        FinaliseAttempt.objects.create(
            tenant=tenant, attachment=a1, retry_log=run, source="scheduled", succeeded=ok
        )
    FinaliseAttempt.objects.create(tenant=tenant, attachment=a1, source="upload", succeeded=False)

    # payments — Acme: 2 pending (1 of them stale), 1 completed today 19.00 EUR;
    # Globex: 1 refunded (completed today) 50.00 USD
    PaymentSessionFactory(tenant=tenant)
    stale = PaymentSessionFactory(tenant=tenant)
    PaymentSession.objects.filter(pk=stale.pk).update(created_at=now - timedelta(hours=30))
    PaymentSessionFactory(tenant=tenant, status="completed", completed_at=now, amount=1900)
    PaymentSessionFactory(
        tenant=other_tenant,
        status="refunded",
        completed_at=now,
        amount=5000,
        amount_refunded=5000,
        currency="usd",
    )

    # assessments — Acme today: 2 started, 1 in progress, 1 completed, 1 abandoned;
    # Globex: 1 completed 3 days ago
    for status in ("started", "started", "in_progress", "completed", "abandoned"):
        SessionFactory(tenant=tenant, status=status)
    old = SessionFactory(tenant=other_tenant, status="completed", completed_at=now)
    SessionFactory._meta.model.objects.filter(pk=old.pk).update(created_at=now - timedelta(days=3))
    return {"now": now, "hook": hook, "slack": slack}


@pytest.fixture
def superuser(db):
    return User.objects.create_superuser("root", "root@example.com", "pw-root-123")


@pytest.fixture
def outbox_staff(db):
    """Staff who may view outbox deliveries and targets, and nothing else."""
    user = User.objects.create_user("ops", "ops@example.com", "pw-ops-123", is_staff=True)
    user.user_permissions.add(
        *Permission.objects.filter(
            content_type__app_label="outbox", codename__in=["view_delivery", "view_target"]
        )
    )
    return user
