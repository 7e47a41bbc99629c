"""The payment state machine: the one table of allowed transitions.

Services enforce it twice: in Python (to record an ignored transition with a reason) and in
the conditional UPDATE `... WHERE status IN (<allowed sources>)`, so two writers can never
apply conflicting transitions.
"""

from __future__ import annotations

from payments.models import PaymentStatus as S

TRANSITIONS: dict[str, frozenset[str]] = {
    S.PENDING: frozenset({S.COMPLETED, S.FAILED, S.EXPIRED}),
    # a later successful async payment (e.g. a bank debit retried by the customer)
    S.FAILED: frozenset({S.COMPLETED}),
    S.COMPLETED: frozenset({S.PARTIALLY_REFUNDED, S.REFUNDED}),
    S.PARTIALLY_REFUNDED: frozenset({S.REFUNDED}),
    S.EXPIRED: frozenset(),
    S.REFUNDED: frozenset(),
}

# A further partial refund keeps the status and only raises amount_refunded (monotonic).
REFUNDABLE = frozenset({S.COMPLETED, S.PARTIALLY_REFUNDED})
# A refund that arrives while the payment is in one of these waits for the completion.
REFUND_WAITS_IN = frozenset({S.PENDING, S.FAILED})


def allowed_sources(target: str) -> list[str]:
    """Statuses from which `target` may be reached: the WHERE status IN (...) list."""
    return sorted(source for source, targets in TRANSITIONS.items() if target in targets)


def is_allowed(source: str, target: str) -> bool:
    return target in TRANSITIONS.get(source, frozenset())


def reachable_from(source: str) -> frozenset[str]:
    """Every status that can follow `source` (directly or not): an event asking for `source`
    while the payment is already in one of these is a late copy, not a contradiction."""
    seen: set[str] = set()
    todo = [source]
    while todo:
        for target in TRANSITIONS.get(todo.pop(), frozenset()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return frozenset(seen)
