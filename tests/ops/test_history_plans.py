"""The console, /metrics and /health stay bounded however long the history grows.

A history large enough for the planner to care (tens of thousands of delivered events with
their deliveries and attempts, twice as many analytics events, inserted with generate_series
and ANALYZEd — no `SET enable_seqscan`, the real statistics decide) plus a small unsettled
set; then every query each page runs is EXPLAINed: a sequential scan of a history table
fails the test. The big admin lists must also run no COUNT at all.
"""

from __future__ import annotations

import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from tenants import rls
from tests.outbox.factories import make_target, publish

pytestmark = pytest.mark.django_db

HISTORY = 30_000
HISTORY_TABLES = (
    "outbox_outboxevent",
    "outbox_delivery",
    "outbox_deliveryattempt",
    "assessments_analyticsevent",
    "uploads_attachment",
    "payments_paymentsession",
)
BIG_LISTS = (
    "/admin/outbox/outboxevent/",
    "/admin/outbox/delivery/",
    "/admin/outbox/delivery/?status__exact=dead",
    "/admin/outbox/outboxevent/?deliveries__status__exact=dead",
    "/admin/assessments/analyticsevent/",
    "/admin/uploads/attachment/",
    "/admin/payments/stripeevent/",
)

_SEED = [
    """
    INSERT INTO outbox_outboxevent (id, tenant_id, topic, event_type, payload, idempotency_key,
        occurred_at, created_at, updated_at, seq)
    SELECT gen_random_uuid(), %(tenant)s, 'things', 'thing.happened',
           jsonb_build_object('n', i), 'old-' || i, at, at, at, nextval('outbox_event_seq')
    FROM (SELECT i, now() - interval '20 days' + i * interval '20 seconds' AS at
          FROM generate_series(1, %(n)s) AS i) AS g
    """,
    """
    INSERT INTO outbox_delivery (tenant_id, event_id, target_id, status, attempts,
        next_attempt_at, locked_by, last_error, delivered_at, created_at, updated_at)
    SELECT e.tenant_id, e.id, %(target)s, 'delivered', 1, e.created_at, '', '', e.created_at,
           e.created_at, e.created_at
    FROM outbox_outboxevent e WHERE e.idempotency_key LIKE 'old-%%'
    """,
    """
    INSERT INTO outbox_deliveryattempt (created_at, updated_at, tenant_id, delivery_id, number,
        outcome, status_code, duration_ms, response_excerpt, error, worker)
    SELECT d.created_at, d.created_at, d.tenant_id, d.id, 1, 'delivered', 200, 30, 'ok', '',
           'w' FROM outbox_delivery d WHERE d.status = 'delivered'
    """,
    """
    INSERT INTO assessments_analyticsevent (tenant_id, message_id, name, properties,
        occurred_at, created_at, updated_at)
    SELECT %(tenant)s, 'm-' || i, 'page_view', '{}', now(), now() - i * interval '10 seconds',
           now() FROM generate_series(1, 2 * %(n)s) AS i
    """,
    # stored attachments and settled payments are history too
    """
    INSERT INTO uploads_attachment (created_at, updated_at, id, tenant_id, channel, filename,
        content_type, size, sha256, expected_sha256, status, upload_offset, attempts,
        last_error, last_retry_source, storage_name, stored_at, tus_metadata, staging_host)
    SELECT at, at, gen_random_uuid(), %(tenant)s, 'multipart', 'f' || i || '.pdf',
           'application/pdf', 1000, md5(i::text) || md5(i::text), '', 'stored', 1000, 1, '', '',
           'attachments/' || i, at, '', 'h'
    FROM (SELECT i, now() - interval '20 days' + i * interval '20 seconds' AS at
          FROM generate_series(1, %(n)s) AS i) AS g
    """,
    """
    INSERT INTO payments_paymentsession (created_at, updated_at, id, tenant_id, email,
        first_name, form_data, amount, currency, status, amount_refunded, refunds,
        stripe_checkout_session_id, livemode, checkout_url, success_url, cancel_url,
        request_fingerprint, completed_at, status_changed_at, failure_reason)
    SELECT at, at, gen_random_uuid(), %(tenant)s, 'p' || i || '@example.com', 'P', '{}', 1000,
           'eur', 'completed', 0, '{}', 'cs_old_' || i, false, '', '', '', '', at, at, ''
    FROM (SELECT i, now() - interval '20 days' + i * interval '20 seconds' AS at
          FROM generate_series(1, %(n)s) AS i) AS g
    """,
]


@pytest.fixture
def history(tenant, other_tenant):
    """HISTORY delivered events (deliveries, attempts), 2×HISTORY analytics events, and a few
    open and dead deliveries on top, with fresh planner statistics."""
    hook = make_target(tenant, name="hook")
    make_target(other_tenant, name="alerts")
    with connection.cursor() as cursor:
        for sql in _SEED:
            cursor.execute(sql, {"tenant": tenant.pk, "target": hook.pk, "n": HISTORY})
    publish(tenant, n=5, target="hook")
    publish(other_tenant, n=3)
    from outbox.models import Delivery

    Delivery.objects.filter(status="pending", tenant=other_tenant).update(status="dead")
    # only the tables' owner may ANALYZE (the application role's ANALYZE is skipped with a
    # warning, leaving the planner without statistics)
    with rls.owner_mode(connection), connection.cursor() as cursor:
        for table in (*HISTORY_TABLES, "outbox_deliverystat"):
            cursor.execute(f"ANALYZE {table}")
    return hook


def _history_scans(queries) -> list[tuple[str, str]]:
    """(table, sql) for every sequential scan of a history table in these queries' plans."""
    found = []
    with connection.cursor() as cursor:
        for query in queries:
            sql = query["sql"]
            if not sql.lstrip().upper().startswith(("SELECT", "WITH")):
                continue
            cursor.execute(f"EXPLAIN {sql}")
            plan = "\n".join(row[0] for row in cursor.fetchall())
            scanned = set(re.findall(r"Seq Scan on (\w+)", plan))
            found += [(t, sql[:300]) for t in HISTORY_TABLES if t in scanned]
    return found


def _captured(client, path: str, **extra):
    with CaptureQueriesContext(connection) as captured:
        response = client.get(path, **extra)
    assert response.status_code == 200, path
    return captured.captured_queries


def test_the_seed_is_big_enough_that_counting_history_plans_a_seq_scan(history):
    """The yardstick: on this seed the old way (counting the delivered history) does plan a
    sequential scan, so the tests below would catch it."""
    for table, where in (
        ("outbox_delivery", "status = 'delivered'"),
        ("uploads_attachment", "status = 'stored'"),
        ("payments_paymentsession", "true"),
    ):
        queries = [{"sql": f"SELECT status, count(*) FROM {table} WHERE {where} GROUP BY 1"}]
        assert (table, queries[0]["sql"]) in _history_scans(queries)


def test_dashboard_metrics_and_health_never_scan_history(client, superuser, history, tenant):
    client.force_login(superuser)
    for path in ("/admin/", f"/admin/?tenant={tenant.pk}", "/metrics", "/health"):
        queries = _captured(client, path, REMOTE_ADDR="127.0.0.1")
        assert len(queries) > 3, path
        assert _history_scans(queries) == [], path


def test_big_admin_lists_run_no_count_and_no_history_scan(client, superuser, history):
    client.force_login(superuser)
    for path in BIG_LISTS:
        queries = _captured(client, path)
        # the paginator's count is over a LIMITed key subquery; nothing counts the table
        unbounded = [
            q["sql"] for q in queries if "COUNT(" in q["sql"].upper() and "LIMIT" not in q["sql"]
        ]
        assert unbounded == [], path
        assert _history_scans(queries) == [], path


def test_a_huge_page_number_reads_a_bounded_number_of_keys(client, superuser, history):
    """?p=99999999 once made the paginator load every id of the table into the web process."""
    from core.admin import CappedPaginator

    client.force_login(superuser)
    with CaptureQueriesContext(connection) as captured:
        client.get("/admin/assessments/analyticsevent/?p=99999999")  # out of range: ?e=1
    queries = captured.captured_queries
    limits = [int(n) for q in queries for n in re.findall(r"LIMIT (\d+)", q["sql"])]
    cap = (CappedPaginator.MAX_PAGE + CappedPaginator.PAGES_AHEAD) * 100
    assert limits and max(limits) <= cap


def test_big_lists_still_page_and_show_the_newest_first(client, superuser, history):
    client.force_login(superuser)
    first = client.get("/admin/outbox/outboxevent/")
    events = list(first.context["cl"].result_list)
    assert len(events) == 100 and events[0].seq > events[-1].seq
    assert first.context["cl"].result_count == 1100  # "at least": ten pages ahead
    deep = client.get("/admin/outbox/outboxevent/", {"p": "30"})
    assert deep.status_code == 200 and len(deep.context["cl"].result_list) == 100
    dead = client.get("/admin/outbox/delivery/", {"status__exact": "dead"})
    assert dead.context["cl"].result_count == 3
