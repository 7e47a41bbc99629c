"""The admin index is the operations dashboard: numbers against factory rows, links that
list the same rows, permissions per section."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.db.models import F

from core.figures import Figure
from outbox.models import Delivery

pytestmark = pytest.mark.django_db


def _dashboard(client, user, **params):
    client.force_login(user)
    response = client.get("/admin/", params)
    assert response.status_code == 200
    return response, response.context["dashboard"]


def _figures(data):
    if isinstance(data, Figure):
        yield data
    elif isinstance(data, dict):
        for value in data.values():
            yield from _figures(value)
    elif isinstance(data, list | tuple):
        for value in data:
            yield from _figures(value)


def test_overall_numbers_match_the_factory_rows(client, superuser, world):
    oldest = Delivery.objects.filter(status="pending", tenant__name="Acme").first()
    Delivery.objects.filter(pk=oldest.pk).update(created_at=F("created_at") - timedelta(minutes=10))
    _response, d = _dashboard(client, superuser)
    o, u, p, a = d["outbox"], d["uploads"], d["payments"], d["assessments"]
    assert (o["pending"].value, o["dead"].value) == (3, 1)
    assert o["attempts_24h"] == 3 and o["success_rate_24h"].value == 33.3
    assert 600 <= o["lag_seconds"].value < 660 and str(o["lag_seconds"]).startswith("10m ")
    targets = {(t["tenant"], t["name"]): t for t in o["targets"]}
    assert targets[("Globex", "alerts")]["circuit"].value == "open"
    assert targets[("Globex", "alerts")]["trouble"] is True
    assert targets[("Acme", "hook")]["pending"].value == 2
    assert targets[("Acme", "hook")]["dead_24h"].value == 1
    assert o["targets"][0]["name"] == "alerts"  # troubled targets first
    assert (u["pending"].value, u["failed"].value, u["receiving"].value) == (3, 1, 0)
    today = u["chart"][-1]
    assert today["values"]["succeeded"].value == 3 and today["values"]["failed"].value == 1
    assert today["rate"] == 75.0
    assert sum(c["values"]["succeeded"].value for c in u["chart"][:-1]) == 0
    scheduled = next(r for r in u["report"] if r["source"] == "scheduled")
    assert (scheduled["runs"], scheduled["attempted"], scheduled["failed"]) == (1, 4, 1)
    by_status = {f.filters["status__exact"]: f.value for f in p["by_status"]}
    assert by_status == {
        "pending": 2,
        "completed": 1,
        "failed": 0,
        "expired": 0,
        "refunded": 1,
        "partially_refunded": 0,
    }
    assert [str(f) for f in p["revenue"]["today"]] == ["19.00 EUR", "50.00 USD"]
    assert [f.value for f in p["revenue"]["week"]] == [1, 1]
    assert p["stale_pending"].value == 1
    assert (a["started"].value, a["completed"].value, a["abandoned"].value) == (6, 2, 1)
    assert a["completion_rate"] == 33.3
    assert a["chart"][-1]["started"].value == 5 and a["chart"][-1]["rate"] == 20.0
    assert a["chart"][-4]["values"]["completed"].value == 1


def test_per_tenant_numbers_only_count_that_tenant(client, superuser, world, tenant):
    _response, d = _dashboard(client, superuser, tenant=str(tenant.pk))
    assert d["tenant"] == tenant and "per_tenant" not in d
    o, u, p, a = d["outbox"], d["uploads"], d["payments"], d["assessments"]
    assert (o["pending"].value, o["dead"].value) == (2, 1)
    assert [t["name"] for t in o["targets"]] == ["hook"]
    assert (u["pending"].value, u["failed"].value) == (2, 1)
    assert u["report"] is None  # retry runs are not per tenant
    assert {f.filters["status__exact"]: f.value for f in p["by_status"]}["refunded"] == 0
    assert [str(f) for f in p["revenue"]["today"]] == ["19.00 EUR"]
    assert (a["started"].value, a["completed"].value) == (5, 1)
    # every figure is filtered to the tenant
    for figure in _figures(d):
        if figure.model != "outbox.target" or "id__exact" not in figure.filters:
            assert figure.filters.get("tenant__id__exact") == str(tenant.pk), figure


def test_tenant_table_has_one_row_per_tenant(client, superuser, world):
    _response, d = _dashboard(client, superuser)
    rows = {r["tenant"].name: r for r in d["per_tenant"]}
    assert rows["Acme"]["outbox_pending"].value == 2 and rows["Globex"]["outbox_pending"].value == 1
    assert rows["Acme"]["uploads_failed"].value == 1 and rows["Globex"]["uploads_failed"].value == 0
    assert rows["Acme"]["payments_pending"].value == 2
    assert rows["Globex"]["payments_paid_7d"].value == 1
    assert rows["Acme"]["sessions_started"].value == 5 and rows["Acme"]["completion_rate"] == 20.0
    assert rows["Globex"]["completion_rate"] == 100.0


@pytest.mark.parametrize("scope", ["overall", "tenant"])
def test_every_number_links_to_a_list_showing_that_many_rows(
    client, superuser, world, tenant, scope
):
    params = {"tenant": str(tenant.pk)} if scope == "tenant" else {}
    response, d = _dashboard(client, superuser, **params)
    counted = [f for f in _figures(d) if f.is_count]
    assert len(counted) > 40
    for figure in counted:
        assert figure.url, figure
        listed = client.get(figure.url)
        # an unknown filter makes the admin redirect to ?e=1: every link must be a real filter
        assert listed.status_code == 200, figure.url
        assert listed.context["cl"].result_count == figure.value, figure.url
        if figure.value:  # zero-height bars are not drawn; every other number is a link
            assert figure.url.replace("&", "&amp;") in response.content.decode()


def test_links_use_filters_the_lists_really_apply(client, superuser, world):
    _response, d = _dashboard(client, superuser)
    dead = client.get(d["outbox"]["dead"].url)
    assert [row.status for row in dead.context["cl"].result_list] == ["dead"]
    circuit = client.get(d["outbox"]["targets"][0]["circuit"].url)
    assert [t.name for t in circuit.context["cl"].result_list] == ["alerts"]


def test_charts_are_inline_svg_with_linked_bars(client, superuser, world):
    response, _d = _dashboard(client, superuser)
    html = response.content.decode()
    for chart in ("chart-uploads", "chart-assessments"):
        svg = re.search(rf'<svg id="{chart}".*?</svg>', html, re.S).group(0)
        assert svg.count('<g class="bar"') == 7
    uploads = re.search(r'<svg id="chart-uploads".*?</svg>', html, re.S).group(0)
    assert 'data-series="succeeded" data-value="3"' in uploads
    assert 'data-series="failed" data-value="1"' in uploads
    assert uploads.count('class="rate-point"') == 1  # one day with attempts
    assessments = re.search(r'<svg id="chart-assessments".*?</svg>', html, re.S).group(0)
    # sessions 3 days ago and today: two points, and no line bridging the empty days
    assert assessments.count('class="rate-point"') == 2 and "<polyline" not in assessments
    assert "<script" not in html.split('id="atlas-dashboard"')[1].split("</svg>")[0]
    assert 'src="http' not in html and "cdn" not in html.lower()


def test_app_list_stays_below_the_dashboard(client, superuser, world):
    response, _d = _dashboard(client, superuser)
    html = response.content.decode()
    assert html.index('id="atlas-dashboard"') < html.index('class="app-outbox module')


def test_status_banner_for_superusers_matches_atlas_status(client, superuser, world):
    response, d = _dashboard(client, superuser)
    # no worker, no cluster in tests: nothing delivers
    assert d["status"]["level"] == "down"
    assert 'data-level="down"' in response.content.decode()


def test_staff_sees_only_the_sections_they_may_view(client, outbox_staff, world):
    response, d = _dashboard(client, outbox_staff)
    html = response.content.decode()
    assert d["sections"] == {"outbox"}
    assert 'id="section-outbox"' in html
    for hidden in ("section-uploads", "section-payments", "section-assessments", "ops-status"):
        assert f'id="{hidden}"' not in html
    assert "status" not in d and "payments" not in d
    assert all(f.url for f in _figures(d["outbox"]))
    # per-tenant table: only outbox numbers are shown (the rest is a dash, not a number)
    row = re.search(r'<tr data-tenant="Acme">.*?</tr>', html, re.S).group(0)
    assert row.count("<a href") == 3 and row.count("<td>–</td>") == 6
    assert client.get(d["outbox"]["dead"].url).status_code == 200
    assert client.get("/admin/payments/paymentsession/").status_code == 403


def test_staff_without_any_operations_permission_sees_no_numbers(client, outbox_staff, world):
    outbox_staff.user_permissions.clear()
    response, d = _dashboard(client, outbox_staff)
    assert d["sections"] == set() and "per_tenant" not in d
    assert 'id="no-sections"' in response.content.decode()


def test_anonymous_visitor_is_sent_to_the_login_page(client, world):
    response = client.get("/admin/")
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")
