"""The claim shares a worker fairly: a per-target cap on live leases (across workers), turns
per tenant (round-robin over its targets), half of the slots at most while another tenant
competes. In-process claims against real rows; the worker processes are in
test_fairness_process.py."""

from collections import Counter
from datetime import timedelta

import pytest
from django.utils import timezone

from outbox.delivery import Deliverer
from outbox.delivery.claim import Fairness
from outbox.models import Delivery
from tenants import rls
from tests.outbox.backlog import backlog_insert
from tests.outbox.factories import make_target, publish

pytestmark = pytest.mark.django_db


@pytest.fixture
def deliverer():
    deliverer = Deliverer(concurrency=2, worker_id="fair")
    yield deliverer
    deliverer.close()


def by_tenant(batch) -> Counter:
    return Counter(job.tenant_id for job in batch.jobs)


def by_target(batch) -> Counter:
    return Counter(job.target_id for job in batch.jobs)


def test_a_backlog_does_not_push_a_newcomer_to_the_back_of_the_queue(
    tenant, other_tenant, deliverer
):
    """10,000 older due deliveries of one tenant; one of another tenant arrives last. FIFO
    over everything would hand out the backlog's head first; the claim gives the newcomer
    its turn in the very first claim, even a claim of two."""
    hog = [make_target(other_tenant, f"hog{i}", url=f"http://127.0.0.1:9/{i}") for i in range(4)]
    backlog_insert(tenant=other_tenant, targets=hog, n=10_000, spread=True)
    make_target(tenant, url="http://127.0.0.1:9/a")
    (event,) = publish(tenant)
    batch = deliverer.claim(batch_size=2, fairness=Fairness(slots=32), probes=False)
    assert by_tenant(batch) == {str(tenant.pk): 1, str(other_tenant.pk): 1}
    assert str(event.id) in {job.event_id for job in batch.jobs}


def test_a_tenant_gets_at_most_half_the_slots_while_another_has_due_deliveries(
    tenant, other_tenant, deliverer
):
    hog = [make_target(other_tenant, f"hog{i}", url=f"http://127.0.0.1:9/{i}") for i in range(8)]
    backlog_insert(tenant=other_tenant, targets=hog, n=400, spread=True)
    make_target(tenant, url="http://127.0.0.1:9/a")
    publish(tenant, n=3)
    batch = deliverer.claim(batch_size=32, fairness=Fairness(slots=32), probes=False)
    assert by_tenant(batch) == {str(tenant.pk): 3, str(other_tenant.pk): 16}


def test_what_a_tenant_already_has_in_flight_counts_against_its_turns(
    tenant, other_tenant, deliverer
):
    """The hog holds 14 of 32 slots on this worker: while the other tenant competes its turns
    start at 15, so of three slots the other tenant's two events take two."""
    hog = [make_target(other_tenant, f"hog{i}", url=f"http://127.0.0.1:9/{i}") for i in range(8)]
    backlog_insert(tenant=other_tenant, targets=hog, n=400, spread=True)
    make_target(tenant, url="http://127.0.0.1:9/a")
    publish(tenant, n=2)
    fairness = Fairness(slots=32, held={str(other_tenant.pk): 14})
    batch = deliverer.claim(batch_size=3, fairness=fairness, probes=False)
    assert by_tenant(batch) == {str(tenant.pk): 2, str(other_tenant.pk): 1}


def test_a_tenant_recently_active_on_the_worker_keeps_the_hog_at_half(
    tenant, other_tenant, deliverer
):
    """Between a steady publisher's events nothing of it is due; it still competes."""
    hog = [make_target(other_tenant, f"hog{i}", url=f"http://127.0.0.1:9/{i}") for i in range(8)]
    backlog_insert(tenant=other_tenant, targets=hog, n=400, spread=True)
    quiet = deliverer.claim(batch_size=32, fairness=Fairness(slots=32), probes=False)
    assert by_tenant(quiet) == {str(other_tenant.pk): 28}  # alone: all but an eighth
    Delivery.objects.update(locked_until=None, locked_by="")
    active = Fairness(slots=32, active=[str(tenant.pk)])
    batch = deliverer.claim(batch_size=32, fairness=active, probes=False)
    assert by_tenant(batch) == {str(other_tenant.pk): 16}


def test_one_target_holds_at_most_its_cap_of_live_leases_across_workers(
    tenant, settings, deliverer
):
    settings.OUTBOX_TARGET_MAX_IN_FLIGHT = 3
    slow = make_target(tenant, "slow", url="http://127.0.0.1:9/slow")
    other = make_target(tenant, "other", url="http://127.0.0.1:9/other")
    backlog_insert(tenant=tenant, targets=[slow], n=50)
    backlog_insert(tenant=tenant, targets=[other], n=2, prefix="o-")
    first = deliverer.claim(batch_size=32, fairness=Fairness(slots=32), probes=False)
    assert by_target(first) == {str(slow.pk): 3, str(other.pk): 2}
    second_worker = Deliverer(concurrency=2, worker_id="second")
    try:
        second = second_worker.claim(batch_size=32, fairness=Fairness(slots=32), probes=False)
        assert second.jobs == []  # the cap counts every worker's leases
        lapsed = next(job for job in first.jobs if job.target_id == str(slow.pk))
        Delivery.objects.filter(pk=lapsed.delivery_id).update(
            locked_until=timezone.now() - timedelta(seconds=1)
        )  # a lapsed lease (a dead worker's) frees its place
        third = second_worker.claim(batch_size=32, fairness=Fairness(slots=32), probes=False)
        assert by_target(third) == {str(slow.pk): 1}
    finally:
        second_worker.close()
    live = Delivery.objects.filter(target=slow, locked_until__gt=timezone.now()).count()
    assert live == 3


def test_a_tenants_targets_take_turns(tenant, settings, deliverer):
    """An old backlog on one target does not starve the tenant's other target."""
    settings.OUTBOX_TARGET_MAX_IN_FLIGHT = 32
    busy = make_target(tenant, "busy", url="http://127.0.0.1:9/busy")
    backlog_insert(tenant=tenant, targets=[busy], n=500)
    quiet = make_target(tenant, "quiet", url="http://127.0.0.1:9/quiet")
    publish(tenant, n=2, target="quiet")
    batch = deliverer.claim(batch_size=4, fairness=Fairness(slots=32), probes=False)
    assert by_target(batch) == {str(busy.pk): 2, str(quiet.pk): 2}


def test_the_claim_reads_each_target_s_head_not_the_backlog(tenant, other_tenant):
    """EXPLAIN of the claim over 20,000 due rows: the per-target index, a bounded read."""
    from django.db import connection

    from outbox.delivery.claim import _CLAIM_SQL

    hog = make_target(other_tenant, "hog", url="http://127.0.0.1:9/hog")
    backlog_insert(tenant=other_tenant, targets=[hog], n=20_000)
    make_target(tenant, url="http://127.0.0.1:9/a")
    publish(tenant)
    with rls.owner_mode(connection), connection.cursor() as cursor:  # only the owner ANALYZEs
        cursor.execute("ANALYZE outbox_delivery")
    with connection.cursor() as cursor:
        now = timezone.now()
        params = {
            "now": now, "lease_until": now, "token": "explain", "limit": 32,
            "circuit": "closed", "target": None, "target_cap": 4, "per_target": 4, "head": 36,
            "held_tenants": [], "held_counts": [], "active": [], "share": 16, "solo": 28,
        }  # fmt: skip
        cursor.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + _CLAIM_SQL, params)
        plan = cursor.fetchone()[0][0]

    def nodes(node):
        yield node
        for child in node.get("Plans", []):
            yield from nodes(child)

    scans = [n for n in nodes(plan["Plan"]) if n.get("Relation Name") == "outbox_delivery"]
    assert "outbox_delivery_target_due" in {n.get("Index Name") for n in scans}
    assert all(n["Node Type"] != "Seq Scan" for n in scans)
    rows_read = sum(n["Actual Rows"] * n["Actual Loops"] for n in scans)
    assert rows_read < 200  # the heads of two targets, not 20,000 rows
    assert plan["Plan"]["Total Cost"] < 100_000  # below jit_above_cost: no JIT per claim
