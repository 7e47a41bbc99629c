"""Uploads in the admin: filters, retry action, staff download, read-only logs, health page."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import TestCase
from django.urls import reverse
from django.utils import timezone

from tests.uploads.factories import staged_attachment
from uploads.models import Attachment, RetryLog
from uploads.services.finalising import attachment_finalise

pytestmark = pytest.mark.django_db
CHANGELIST = "/admin/uploads/attachment/"


@pytest.mark.parametrize(
    "query",
    [
        "",
        "?status__exact=failed",
        "?age=1h",
        "?age=older",
        "?channel__exact=tus",
        "?last_retry_source__exact=scheduled",
    ],  # fmt: skip
)
def test_attachment_changelist_filters(admin_client, tenant, query):
    staged_attachment(tenant, filename="visible.pdf", status="failed", last_error="OSError: full",
                      channel="tus", last_retry_source="scheduled")  # fmt: skip
    response = admin_client.get(CHANGELIST + query)
    assert response.status_code == 200
    expect_row = query not in ("?age=older",)
    assert (b"visible.pdf" in response.content) is expect_row
    if expect_row:
        assert b"OSError: full" in response.content


def test_retry_action_stores_selected_and_logs_a_manual_run(admin_client, tenant, settings):
    settings.UPLOADS_MAX_ATTEMPTS = 1
    failed = staged_attachment(tenant, b"retry me", status="failed", attempts=1)
    with TestCase.captureOnCommitCallbacks(execute=True):
        response = admin_client.post(
            CHANGELIST,
            {"action": "retry_now", "_selected_action": [str(failed.pk)]},
            follow=True,
        )
    assert response.status_code == 200
    assert b"Retried 1: 1 stored, 0 failed" in response.content
    failed.refresh_from_db()
    assert failed.status == "stored"
    assert RetryLog.objects.get().source == "manual"


def test_staff_download_link_serves_the_stored_bytes(admin_client, client, tenant):
    attachment = staged_attachment(tenant, b"%PDF-1.7 bytes", filename="report.pdf")
    with TestCase.captureOnCommitCallbacks(execute=True):
        attachment_finalise(attachment_id=attachment.pk, source="manual")
    url = reverse("admin:uploads_attachment_download", args=[attachment.pk])
    page = admin_client.get(f"{CHANGELIST}{attachment.pk}/change/")
    assert url.encode() in page.content
    response = admin_client.get(url)
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == b"%PDF-1.7 bytes"
    assert "report.pdf" in response["Content-Disposition"]
    anonymous = client.get(url)
    assert anonymous.status_code == 302 and "/login/" in anonymous["Location"]


def test_staff_can_download_a_pending_file_from_staging(admin_client, tenant):
    attachment = staged_attachment(tenant, b"still staged")
    response = admin_client.get(reverse("admin:uploads_attachment_download", args=[attachment.pk]))
    assert b"".join(response.streaming_content) == b"still staged"


def test_retry_logs_are_read_only(admin_client):
    log = RetryLog.objects.create(source="scheduled", started_at=timezone.now(), attempted=1,
                                  succeeded=1)  # fmt: skip
    assert admin_client.get("/admin/uploads/retrylog/").status_code == 200
    assert admin_client.get("/admin/uploads/retrylog/add/").status_code == 403
    admin_client.post(f"/admin/uploads/retrylog/{log.pk}/change/", {"attempted": 99})
    log.refresh_from_db()
    assert log.attempted == 1
    assert admin_client.post(f"/admin/uploads/retrylog/{log.pk}/delete/").status_code == 403
    assert Attachment._meta.app_label == "uploads"


def test_health_page_shows_numbers_and_a_chart_per_day(admin_client):
    now = timezone.now()
    RetryLog.objects.create(source="scheduled", started_at=now, attempted=10, succeeded=7, failed=3)
    RetryLog.objects.create(source="client-sync", started_at=now - timedelta(days=1), attempted=4,
                            succeeded=4)  # fmt: skip
    response = admin_client.get(reverse("admin:uploads_retrylog_health"))
    assert response.status_code == 200
    html = response.content.decode()
    assert 'data-source="scheduled"' in html
    assert "<td>10</td><td>7</td><td>3</td>" in html.replace("\n", "").replace("        ", "")
    assert "70.0 %" in html
    assert html.count("<g data-day=") == 7
    assert f'data-day="{now:%Y-%m-%d}"' in html
    assert (
        reverse("admin:uploads_retrylog_health")
        in admin_client.get("/admin/uploads/retrylog/").content.decode()
    )
