"""Delivering events: claim (SKIP LOCKED + lease), send (HTTP per target kind), rate limit,
record (one statement per round) and the per-target circuit breaker.

`Deliverer` runs rounds for the worker and the django-q2 sweep.
"""

from outbox.delivery.deliverer import Batch, Deliverer

__all__ = ["Batch", "Deliverer"]
