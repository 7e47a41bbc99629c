"""A small circuit breaker for calls to Stripe, shared by every process (a PostgreSQL row).

closed     → calls go through; each failure (timeout, connection error, 5xx) increments a
             counter, any answer from Stripe (even a 4xx) resets it.
open       → after STRIPE_CIRCUIT_FAILURE_THRESHOLD consecutive failures, calls are refused
             for STRIPE_CIRCUIT_COOLDOWN_SECONDS without touching the network.
half-open  → after the cooldown, exactly one caller wins a conditional UPDATE and probes;
             success closes the circuit, failure opens it again.

Every state change is one conditional UPDATE, so concurrent processes never race.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db.models import Case, F, Q, Value, When
from django.utils import timezone

from payments.models import CircuitBreakerState

STRIPE = "stripe"


@dataclass
class CircuitOpen(Exception):
    name: str
    retry_after_seconds: int

    def __str__(self):
        return f"circuit {self.name!r} is open; retry in {self.retry_after_seconds}s"


def _row(name: str) -> CircuitBreakerState:
    row, _ = CircuitBreakerState.objects.get_or_create(name=name)
    return row


def circuit_before_call(name: str = STRIPE) -> None:
    """Raise CircuitOpen when calls must not go out; claims the half-open probe otherwise."""
    now = timezone.now()
    row = _row(name)
    if row.opened_until is None:
        return
    if row.opened_until > now:
        raise CircuitOpen(name, max(1, int((row.opened_until - now).total_seconds()) + 1))
    # Cooldown over: one probe at a time (the probe lease expires after the call timeout).
    lease = now + timedelta(seconds=settings.STRIPE_TIMEOUT_SECONDS * 2 + 1)
    won = CircuitBreakerState.objects.filter(
        Q(probe_until__isnull=True) | Q(probe_until__lt=now),
        name=name,
        opened_until__lte=now,
    ).update(probe_until=lease, updated_at=now)
    if not won:
        raise CircuitOpen(name, 1)


def circuit_record_success(name: str = STRIPE) -> None:
    # Cheap when already closed: the WHERE makes it a no-op.
    CircuitBreakerState.objects.filter(
        Q(consecutive_failures__gt=0)
        | Q(opened_until__isnull=False)
        | Q(probe_until__isnull=False),
        name=name,
    ).update(consecutive_failures=0, opened_until=None, probe_until=None, updated_at=timezone.now())


def circuit_record_failure(error: str, name: str = STRIPE) -> None:
    now = timezone.now()
    _row(name)
    threshold = settings.STRIPE_CIRCUIT_FAILURE_THRESHOLD
    reopen_at = now + timedelta(seconds=settings.STRIPE_CIRCUIT_COOLDOWN_SECONDS)
    CircuitBreakerState.objects.filter(name=name).update(
        consecutive_failures=F("consecutive_failures") + 1,
        opened_until=Case(
            # threshold reached, or a failed half-open probe: (re)open
            When(
                Q(consecutive_failures__gte=threshold - 1) | Q(opened_until__isnull=False),
                then=Value(reopen_at),
            ),
            default=F("opened_until"),
        ),
        probe_until=None,
        last_failure_at=now,
        last_error=error[:2000],
        updated_at=now,
    )


def circuit_state(name: str = STRIPE) -> str:
    row = CircuitBreakerState.objects.filter(name=name).first()
    if row is None or row.opened_until is None:
        return "closed"
    return "open" if row.opened_until > timezone.now() else "half_open"
