"""The per-request health check (CONN_HEALTH_CHECKS) asks the server only when the socket says
something happened: a healthy persistent connection costs no SELECT 1 per request, a
connection the server ended is still replaced before the request uses it."""

from __future__ import annotations

import time

import pytest
from django.db import connection
from django.db.backends.postgresql import base as django_postgresql

from tenants import rls

pytestmark = pytest.mark.django_db(transaction=True)


def _ask_counter(monkeypatch) -> list[int]:
    asked: list[int] = []
    real = django_postgresql.DatabaseWrapper.is_usable

    def counting(self):
        asked.append(1)
        return real(self)

    monkeypatch.setattr(django_postgresql.DatabaseWrapper, "is_usable", counting)
    return asked


def test_a_healthy_connection_is_not_asked(monkeypatch):
    connection.ensure_connection()
    asked = _ask_counter(monkeypatch)
    assert connection.is_usable() is True
    assert asked == []


def test_a_connection_the_server_ended_is_found_and_replaced(monkeypatch):
    from django.db import connections

    connection.ensure_connection()
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (pid,) = cursor.fetchone()
    other = connections.create_connection("default")
    try:
        with rls.owner_mode(other), other.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
    finally:
        other.close()
    time.sleep(0.2)  # the termination message reaches the socket
    asked = _ask_counter(monkeypatch)
    assert connection.is_usable() is False
    assert asked == [1]  # the socket had news: the server was asked, as Django asks
    connection.close()
    connection.ensure_connection()
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        assert cursor.fetchone() == (1,)
