from datetime import timedelta
from io import StringIO

import pytest
import time_machine
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.test import Client
from django.utils import timezone

from assessments import metrics
from assessments.models import AssessmentSession
from assessments.tasks import SCHEDULES, sessions_abandon_stale
from ops.schedules import declared_schedules
from tests.assessments.factories import EventFactory, SessionFactory, SubmissionFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client():
    user = get_user_model().objects.create_superuser("root", "root@example.com", "pw-123456")
    client = Client()
    client.force_login(user)
    return client


def test_session_admin_lists_filters_and_searches(staff_client, tenant):
    SessionFactory(tenant=tenant, email="findme@example.com", status="completed")
    SessionFactory(tenant=tenant, email="other@example.com", status="abandoned")
    url = "/admin/assessments/assessmentsession/"
    page = staff_client.get(url, {"q": "findme"})
    assert page.status_code == 200
    assert b"findme@example.com" in page.content and b"other@example.com" not in page.content
    page = staff_client.get(url, {"status__exact": "abandoned"})
    assert b"other@example.com" in page.content and b"findme@example.com" not in page.content


def test_session_detail_shows_responses_pretty_and_read_only(staff_client, tenant):
    session = SessionFactory(tenant=tenant, responses={"q1": {"choice": "b"}})
    page = staff_client.get(f"/admin/assessments/assessmentsession/{session.id}/change/")
    assert page.status_code == 200
    assert b"<pre" in page.content and b"&quot;choice&quot;: &quot;b&quot;" in page.content
    assert b'name="responses"' not in page.content  # not an editable field
    assert b'name="status"' not in page.content and b'name="email"' not in page.content
    assert b'name="_save"' not in page.content


def test_submissions_and_events_are_read_only(staff_client, tenant):
    submission = SubmissionFactory(session=SessionFactory(tenant=tenant))
    assert staff_client.get("/admin/assessments/submission/").status_code == 200
    detail = staff_client.get(f"/admin/assessments/submission/{submission.id}/change/")
    assert detail.status_code == 200 and b'name="_save"' not in detail.content
    assert staff_client.get("/admin/assessments/submission/add/").status_code == 403
    EventFactory(tenant=tenant)
    assert staff_client.get("/admin/assessments/analyticsevent/").status_code == 200
    assert staff_client.get("/admin/assessments/analyticsevent/add/").status_code == 403


def test_event_admin_shows_storage_failures(staff_client):
    metrics.events_store_failure_record(tenant_id="t", count=5, error=RuntimeError("db down"))
    page = staff_client.get("/admin/assessments/analyticsevent/")
    assert b"1 event batches could not be stored (5 events lost)" in page.content
    assert b"db down" in page.content


def test_stats_command_counts_and_rate(tenant, other_tenant):
    for status in ("started", "in_progress", "completed", "completed", "abandoned"):
        SessionFactory(tenant=tenant, status=status)
    SessionFactory(tenant=other_tenant, status="completed")
    with time_machine.travel(timezone.now() - timedelta(days=30)):
        SessionFactory(tenant=tenant, status="abandoned")  # outside the window
    out = StringIO()
    call_command("assessments_stats", "--days", "7", stdout=out)
    lines = out.getvalue().splitlines()
    acme = next(line for line in lines if line.startswith("Acme"))
    assert acme.split() == ["Acme", "5", "1", "1", "2", "1", "40.0%"]
    total = next(line for line in lines if line.startswith("ALL"))
    assert total.split() == ["ALL", "6", "1", "1", "3", "1", "50.0%"]
    assert "completion rate 50.0%" in lines[-1]


def test_stats_command_for_one_tenant_and_bad_input(tenant, other_tenant):
    SessionFactory(tenant=other_tenant, status="completed")
    out = StringIO()
    call_command("assessments_stats", "--tenant", "Acme", stdout=out)
    assert "Globex" not in out.getvalue()
    with pytest.raises(CommandError, match="no tenant"):
        call_command("assessments_stats", "--tenant", "Nobody")
    with pytest.raises(CommandError, match="--days"):
        call_command("assessments_stats", "--days", "0")


def test_stale_open_sessions_are_abandoned(tenant, settings):
    settings.ASSESSMENTS_ABANDON_AFTER_MINUTES = 60
    old = timezone.now() - timedelta(hours=2)
    stale = SessionFactory(tenant=tenant, status="in_progress", last_activity_at=old)
    fresh = SessionFactory(tenant=tenant, status="in_progress")
    done = SessionFactory(tenant=tenant, status="completed", last_activity_at=old)
    assert sessions_abandon_stale() == 1
    statuses = dict(AssessmentSession.objects.values_list("id", "status"))
    assert statuses == {stale.id: "abandoned", fresh.id: "in_progress", done.id: "completed"}
    assert AssessmentSession.objects.get(pk=stale.id).abandoned_at is not None


def test_schedule_is_declared():
    assert SCHEDULES[0] in declared_schedules()
    assert SCHEDULES[0].func == "assessments.tasks.sessions_abandon_stale"


def test_health_reports_recent_event_storage_failures(client):
    def check():
        return client.get("/health").json()["checks"]["assessment_events_storage"]

    assert check()["ok"] is True
    metrics.events_store_failure_record(tenant_id="t", count=3, error=RuntimeError("x"))
    failing = check()
    assert failing["ok"] is False and failing["critical"] is False
    assert failing["lostEvents"] == 3 and failing["failedBatches"] == 1
    with time_machine.travel(timezone.now() + timedelta(minutes=20)):
        assert check()["ok"] is True
