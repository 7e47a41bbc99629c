"""Set-up for the admin permission tests: staff users holding exactly the permissions a test
names, a row in every table an admin action can change, and a snapshot of every table."""

from __future__ import annotations

import uuid
from datetime import timedelta

from axes.models import AccessAttempt, AccessAttemptExpiration
from django.apps import apps
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.contrib.sessions.models import Session
from django.utils import timezone
from django_q.models import Schedule, Task

from outbox.models import Delivery, Target
from payments.models import CircuitBreakerState, StripeEvent
from tests.factories import TenantFactory, make_api_key
from tests.outbox.factories import make_target, publish
from tests.payments.factories import AllowedPriceFactory, PaymentSessionFactory
from uploads.models import Attachment


def staff_user(username: str, *codenames: str, view_all: bool = False):
    """A staff user (not superuser) with the named permissions ("app.codename"), plus every
    view_* permission when view_all."""
    user = get_user_model().objects.create_user(username, password="pw-123456", is_staff=True)
    perms = list(Permission.objects.filter(codename__startswith="view_")) if view_all else []
    for name in codenames:
        app_label, codename = name.split(".", 1)
        perms.append(Permission.objects.get(content_type__app_label=app_label, codename=codename))
    user.user_permissions.set(perms)
    return get_user_model().objects.get(pk=user.pk)  # fresh: no cached permissions


def build_world() -> dict:
    """At least one row for every model whose admin has an action that changes something."""
    alpha = TenantFactory(name="Alpha")
    beta = TenantFactory(name="Beta")
    make_api_key(beta, "secret")
    make_api_key(beta, "publishable", origins=["https://beta.example.test"])
    target = make_target(beta, name="hook")
    Target.objects.filter(pk=target.pk).update(
        circuit_state=Target.Circuit.OPEN, circuit_failures=5
    )
    events = publish(beta, n=2, target="hook")
    deliveries = list(Delivery.objects.filter(event__in=events).order_by("created_at"))
    Delivery.objects.filter(pk=deliveries[0].pk).update(status=Delivery.Status.DEAD, attempts=8)
    now = timezone.now()
    Attachment.objects.create(
        tenant=beta, channel=Attachment.Channel.MULTIPART, filename="x.txt", size=3,
        upload_offset=3, status=Attachment.Status.FAILED, next_retry_at=now, attempts=1,
    )  # fmt: skip
    PaymentSessionFactory(tenant=beta)
    AllowedPriceFactory(tenant=beta)
    StripeEvent.objects.create(
        stripe_event_id="evt_admin_walk", type="customer.created", payload={"id": "evt_x"},
        event_created_at=now, status=StripeEvent.Status.FAILED,
    )  # fmt: skip
    CircuitBreakerState.objects.create(
        name="stripe", consecutive_failures=9, opened_until=now + timedelta(minutes=5)
    )
    for success in (True, False):
        Task.objects.create(
            id=uuid.uuid4().hex, name=f"task-{success}", func="math.floor", args=(1.5,),
            started=now, stopped=now, success=success,
        )  # fmt: skip
    Schedule.objects.create(func="math.floor", name="walk-schedule")
    Group.objects.create(name="walkers")
    attempt = AccessAttempt.objects.create(
        username="guesser", ip_address="203.0.113.9", user_agent="", http_accept="",
        path_info="/admin/login/", get_data="", post_data="", failures_since_start=9,
    )  # fmt: skip
    # not expired: every login (force_login too) sweeps expired attempts away
    AccessAttemptExpiration.objects.create(
        access_attempt=attempt, expires_at=now + timedelta(hours=1)
    )
    return {"alpha": alpha, "beta": beta, "target": target, "deliveries": deliveries}


SKIPPED_TABLES = {Session}  # every request may touch the session


def snapshot() -> dict[str, list[dict]]:
    """Every row of every concrete table (the tests' tables are small)."""
    tables = {}
    for model in apps.get_models():
        if model in SKIPPED_TABLES or model._meta.proxy or not model._meta.managed:
            continue
        tables[model._meta.label] = list(model._base_manager.order_by("pk").values())
    return tables


def cookie_messages(response) -> str:
    """The text of the messages the response put in the `messages` cookie (decoded: the cookie
    is signed and may be compressed), plus the raw cookie values."""
    from django.contrib.messages.storage.cookie import CookieStorage

    raw = [morsel.value for morsel in response.cookies.values()]
    cookie = response.cookies.get(CookieStorage.cookie_name)
    decoded = CookieStorage(response.wsgi_request)._decode(cookie.value) if cookie else None
    return " ".join(raw + [str(m) for m in decoded or []])


def changed_tables(before: dict, after: dict) -> list[str]:
    return sorted(label for label in after if before.get(label) != after[label])
