"""Run delivery rounds in the test process (HTTP in threads, database in the test's thread)."""

from __future__ import annotations

import socket

from outbox.delivery import Deliverer
from outbox.models import Delivery


def deliver_round(**options) -> int:
    deliverer = Deliverer(concurrency=options.pop("concurrency", 4), **options)
    try:
        return deliverer.run_once()
    finally:
        deliverer.close()


def open_count() -> int:
    return Delivery.objects.filter(status__in=Delivery.OPEN_STATUSES).count()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
