"""Safety nets: payments_reconcile (command, task, schedule), payments_reprocess, the admin
and the database constraints."""

from __future__ import annotations

import datetime as dt
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.db import IntegrityError, transaction
from django.utils import timezone

from core.errors import DomainError
from ops.schedules import declared_schedules, sync_schedules
from outbox.models import OutboxEvent
from payments import tasks
from payments.models import PaymentSession, StripeApiFailure, StripeEvent
from payments.services.reconciliation import payment_session_reconcile
from payments.transitions import TRANSITIONS, allowed_sources, reachable_from
from tests.payments.factories import (
    PaymentSessionFactory,
    charge_refunded,
    make_event,
    post_event,
)

pytestmark = pytest.mark.django_db


def _age(ps, minutes):
    PaymentSession.objects.filter(pk=ps.pk).update(
        created_at=timezone.now() - dt.timedelta(minutes=minutes)
    )


def _reconcile(*args):
    out = StringIO()
    call_command("payments_reconcile", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


# --- reconcile -------------------------------------------------------------------------------


def test_reconcile_completes_a_payment_whose_webhook_was_lost(tenant, stripe_stub):
    ps = PaymentSessionFactory(tenant=tenant)
    _age(ps, 90)
    stripe_stub.add_session(
        ps.stripe_checkout_session_id,
        status="complete",
        payment_status="paid",
        payment_intent="pi_lost",
    )
    output = _reconcile("--older-than", "60")
    ps.refresh_from_db()
    assert ps.status == "completed"
    assert ps.stripe_payment_intent_id == "pi_lost"
    assert ps.last_reconciled_at is not None
    [call] = stripe_stub.calls("GET")
    assert call.path == f"/v1/checkout/sessions/{ps.stripe_checkout_session_id}"
    published = OutboxEvent.objects.get(ordering_key=str(ps.pk))
    assert published.event_type == "payment.completed"
    assert published.payload["source"] == "reconcile"
    assert f"[1] {ps.pk}" in output
    assert "reconciled: checked=1 changed=1 unchanged=0 errors=0" in output


def test_late_webhook_after_reconcile_changes_nothing(tenant, stripe_stub, webhook_client):
    ps = PaymentSessionFactory(tenant=tenant)
    _age(ps, 90)
    stripe_stub.add_session(
        ps.stripe_checkout_session_id,
        status="complete",
        payment_status="paid",
        payment_intent="pi_l",
    )
    _reconcile("--older-than", "60")
    response = post_event(webhook_client, make_event("checkout.session.completed", ps))
    assert response.json()["status"] == "processed"
    assert OutboxEvent.objects.filter(event_type="payment.completed").count() == 1


def test_reconcile_applies_refunds_that_were_waiting(tenant, stripe_stub, webhook_client):
    ps = PaymentSessionFactory(tenant=tenant)
    _age(ps, 90)
    post_event(
        webhook_client,
        charge_refunded(payment_intent="pi_w", amount_refunded=1900, refunds=[("re_w", 1900)]),
    )
    stripe_stub.add_session(
        ps.stripe_checkout_session_id,
        status="complete",
        payment_status="paid",
        payment_intent="pi_w",
    )
    _reconcile("--older-than", "60")
    ps.refresh_from_db()
    assert (ps.status, ps.amount_refunded) == ("refunded", 1900)


def test_reconcile_expires_and_leaves_open_and_young_sessions(tenant, stripe_stub):
    expired = PaymentSessionFactory(tenant=tenant)
    still_open = PaymentSessionFactory(tenant=tenant)
    young = PaymentSessionFactory(tenant=tenant)
    for ps in (expired, still_open):
        _age(ps, 120)
    stripe_stub.add_session(expired.stripe_checkout_session_id, status="expired")
    stripe_stub.add_session(still_open.stripe_checkout_session_id, status="open")
    output = _reconcile("--older-than", "60")
    assert "checked=2 changed=1 unchanged=1" in output
    assert PaymentSession.objects.get(pk=expired.pk).status == "expired"
    assert PaymentSession.objects.get(pk=still_open.pk).status == "pending"
    assert PaymentSession.objects.get(pk=young.pk).status == "pending"
    assert {c.path.rsplit("/", 1)[1] for c in stripe_stub.calls("GET")} == {
        expired.stripe_checkout_session_id,
        still_open.stripe_checkout_session_id,
    }


def test_reconcile_with_stripe_down_exits_non_zero_and_records(tenant, stripe_stub):
    ps = PaymentSessionFactory(tenant=tenant)
    _age(ps, 90)
    stripe_stub.mode = "server_error"
    with pytest.raises(CommandError, match="1 session"):
        _reconcile("--older-than", "60")
    assert PaymentSession.objects.get(pk=ps.pk).status == "pending"
    failure = StripeApiFailure.objects.get()
    assert (failure.operation, failure.error_code) == (
        "checkout.sessions.retrieve",
        "stripe_unavailable",
    )


def test_reconcile_schedule_is_declared_and_synced(tenant, stripe_stub):
    from django_q.models import Schedule

    [spec] = [s for s in declared_schedules() if s.name == "payments_reconcile"]
    assert (spec.func, spec.minutes) == ("payments.tasks.payments_reconcile", 15)
    sync_schedules()
    schedule = Schedule.objects.get(name="payments_reconcile")
    assert (schedule.func, schedule.minutes) == ("payments.tasks.payments_reconcile", 15)
    ps = PaymentSessionFactory(tenant=tenant)
    _age(ps, 45)
    stripe_stub.add_session(ps.stripe_checkout_session_id, status="expired")
    assert tasks.payments_reconcile()["changed"] == 1  # default threshold: 30 minutes
    assert tasks.payments_reconcile()["checked"] == 0  # idempotent: nothing pending any more


# --- reprocess -------------------------------------------------------------------------------


def test_reprocess_failed_event_after_the_cause_is_fixed(tenant, webhook_client):
    ps = PaymentSessionFactory(tenant=tenant, amount=1000)
    post_event(webhook_client, make_event("checkout.session.completed", ps, payment_intent="pi_f"))
    bad = charge_refunded(payment_intent="pi_f", amount_refunded=1900, refunds=[("re_f", 1900)])
    assert post_event(webhook_client, bad).status_code == 500
    # an operator finds the amount was recorded wrong and fixes it
    PaymentSession.objects.filter(pk=ps.pk).update(amount=1900)
    out = StringIO()
    call_command("payments_reprocess", "--failed", stdout=out)
    assert f"[1] {bad['id']} charge.refunded: processed" in out.getvalue()
    assert "reprocessed: total=1, failed=0, processed=1" in out.getvalue()
    ps.refresh_from_db()
    assert (ps.status, ps.amount_refunded) == ("refunded", 1900)
    stored = StripeEvent.objects.get(stripe_event_id=bad["id"])
    assert (stored.status, stored.processing_error, stored.attempts) == ("processed", "", 2)


def test_reprocess_is_idempotent(tenant, webhook_client):
    ps = PaymentSessionFactory(tenant=tenant)
    event = make_event("checkout.session.completed", ps)
    post_event(webhook_client, event)
    for _ in range(2):
        call_command("payments_reprocess", "--ids", event["id"], stdout=StringIO())
    assert OutboxEvent.objects.filter(ordering_key=str(ps.pk)).count() == 1
    stored = StripeEvent.objects.get()
    assert (stored.status, stored.attempts) == ("processed", 3)
    assert stored.result_note == "no change: already completed"


def test_reprocess_by_type_and_errors(tenant, webhook_client):
    ps = PaymentSessionFactory(tenant=tenant)
    post_event(webhook_client, make_event("checkout.session.expired", ps))
    post_event(webhook_client, make_event("customer.created"))
    out = StringIO()
    call_command("payments_reprocess", "--type", "checkout.session.expired", stdout=out)
    assert "total=1" in out.getvalue()
    with pytest.raises(CommandError, match="say which events"):
        call_command("payments_reprocess", stdout=StringIO())
    with pytest.raises(CommandError, match="only 0 of 1"):
        call_command("payments_reprocess", "--ids", "evt_missing", stdout=StringIO())


# --- admin -----------------------------------------------------------------------------------


@pytest.fixture
def staff_client(client):
    user = get_user_model().objects.create_superuser("ops", "ops@example.com", "pw-ops-123")
    client.force_login(user)
    return client


def test_admin_pages_filters_search_and_stripe_link(staff_client, tenant, webhook_client):
    ps = PaymentSessionFactory(tenant=tenant, email="find.me@example.com")
    post_event(webhook_client, make_event("checkout.session.completed", ps, payment_intent="pi_ad"))
    changelist = staff_client.get(
        "/admin/payments/paymentsession/",
        {"status": "completed", "currency": "eur", "q": "find.me"},
    )
    assert changelist.status_code == 200
    html = changelist.content.decode()
    assert "find.me@example.com" in html
    assert "https://dashboard.stripe.com/test/payments/pi_ad" in html
    assert 'value="delete_selected"' not in html
    by_stripe_id = staff_client.get(
        "/admin/payments/paymentsession/", {"q": ps.stripe_checkout_session_id}
    )
    assert "find.me@example.com" in by_stripe_id.content.decode()
    detail = staff_client.get(f"/admin/payments/paymentsession/{ps.pk}/change/")
    assert detail.status_code == 200
    events = staff_client.get("/admin/payments/stripeevent/", {"status": "processed"})
    assert events.status_code == 200
    assert "checkout.session.completed" in events.content.decode()
    assert 'value="delete_selected"' not in events.content.decode()
    assert staff_client.get("/admin/payments/stripeapifailure/").status_code == 200
    assert staff_client.get("/admin/payments/circuitbreakerstate/").status_code == 200
    assert staff_client.get("/admin/payments/webhookrejection/").status_code == 200


def test_admin_stripe_events_are_read_only_and_reprocessable(staff_client, tenant, webhook_client):
    ps = PaymentSessionFactory(tenant=tenant, amount=1000)
    post_event(webhook_client, make_event("checkout.session.completed", ps, payment_intent="pi_q"))
    bad = charge_refunded(payment_intent="pi_q", amount_refunded=1900, refunds=[("re_q", 1900)])
    post_event(webhook_client, bad)
    stored = StripeEvent.objects.get(stripe_event_id=bad["id"])
    page = staff_client.get(f"/admin/payments/stripeevent/{stored.pk}/change/")
    assert page.status_code == 200
    assert 'name="_save"' not in page.content.decode()  # view only
    assert staff_client.post(f"/admin/payments/stripeevent/{stored.pk}/delete/").status_code == 403
    PaymentSession.objects.filter(pk=ps.pk).update(amount=1900)
    response = staff_client.post(
        "/admin/payments/stripeevent/",
        {"action": "reprocess", "_selected_action": [stored.pk]},
        follow=True,
    )
    assert "Reprocessed 1 event(s)" in response.content.decode()
    stored.refresh_from_db()
    assert stored.status == "processed"
    assert StripeEvent.objects.count() == 2


# --- model -----------------------------------------------------------------------------------


def test_transition_table_matches_the_issue():
    assert allowed_sources("completed") == ["failed", "pending"]
    assert allowed_sources("refunded") == ["completed", "partially_refunded"]
    assert allowed_sources("expired") == ["pending"]
    assert TRANSITIONS["expired"] == frozenset() == TRANSITIONS["refunded"]
    assert reachable_from("failed") == {"completed", "partially_refunded", "refunded"}
    assert reachable_from("expired") == frozenset()


@pytest.mark.parametrize(
    "fields",
    [
        {"email": "nope"},
        {"first_name": "  "},
        {"form_data": [1]},
        {"currency": "EUR"},
        {"amount": -1},
        {"amount_refunded": 5000},
        {"status": "paid"},
        {"status": "completed", "completed_at": None},
    ],
)
def test_database_refuses_bad_rows(tenant, fields):
    with pytest.raises(IntegrityError), transaction.atomic():
        PaymentSessionFactory(tenant=tenant, **fields)


def test_reconcile_stops_early_when_the_circuit_opens(tenant, stripe_stub, settings):
    settings.STRIPE_CIRCUIT_FAILURE_THRESHOLD = 2
    payments = [PaymentSessionFactory(tenant=tenant) for _ in range(4)]
    for ps in payments:
        _age(ps, 90)
    stripe_stub.mode = "server_error"
    out = StringIO()
    with pytest.raises(CommandError):
        call_command("payments_reconcile", "--older-than", "60", stdout=out, stderr=StringIO())
    assert "error: stripe_circuit_open" in out.getvalue()
    assert "(stopped early)" in out.getvalue()
    assert len(stripe_stub.calls("GET")) == 2  # the third session was not sent to Stripe
    assert PaymentSession.objects.filter(status="pending").count() == 4


def test_admin_reconcile_action_and_circuit_close(staff_client, tenant, stripe_stub, settings):
    ps = PaymentSessionFactory(tenant=tenant)
    stripe_stub.add_session(
        ps.stripe_checkout_session_id,
        status="complete",
        payment_status="paid",
        payment_intent="pi_a",
    )
    response = staff_client.post(
        "/admin/payments/paymentsession/",
        {"action": "reconcile_with_stripe", "_selected_action": [ps.pk]},
        follow=True,
    )
    assert "1 session(s) changed, 0 error(s)." in response.content.decode()
    assert PaymentSession.objects.get(pk=ps.pk).status == "completed"

    from payments.circuit import circuit_state
    from payments.models import CircuitBreakerState

    stripe_stub.mode = "server_error"
    for _ in range(settings.STRIPE_CIRCUIT_FAILURE_THRESHOLD):
        with pytest.raises(DomainError, match="Stripe answered with an error"):
            payment_session_reconcile(payment_session=ps)
    assert circuit_state() == "open"
    response = staff_client.post(
        "/admin/payments/circuitbreakerstate/",
        {"action": "close_circuit", "_selected_action": ["stripe"]},
        follow=True,
    )
    assert "Closed 1 circuit(s)." in response.content.decode()
    assert circuit_state() == "closed"
    assert CircuitBreakerState.objects.get().consecutive_failures == 0


@pytest.mark.django_db(transaction=True)
def test_reconcile_command_stops_cleanly_on_sigterm(tenant, stripe_stub):
    import signal

    from tests.processes import manage_popen

    payments = [PaymentSessionFactory(tenant=tenant) for _ in range(10)]
    for ps in payments:
        _age(ps, 90)
        stripe_stub.add_session(ps.stripe_checkout_session_id, status="expired")
    stripe_stub.mode = "slow"  # each answer takes 0.4 s, then succeeds
    stripe_stub.slow_seconds = 0.4
    proc = manage_popen(
        "payments_reconcile",
        "--older-than",
        "60",
        STRIPE_API_BASE=stripe_stub.url,
        STRIPE_SECRET_KEY="sk_test_atlas",
        STRIPE_TIMEOUT_SECONDS="5",
        STRIPE_MAX_NETWORK_RETRIES="0",
        PYTHONUNBUFFERED="1",
        LOG_LEVEL="WARNING",
    )
    try:
        first = proc.stdout.readline()
        while first and not first.startswith("[1] "):
            first = proc.stdout.readline()
        assert first.startswith("[1] "), first
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output
    assert "(stopped early)" in output
    expired = PaymentSession.objects.filter(status="expired").count()
    assert 1 <= expired < 10
    assert f"changed={expired}" in output
