"""Uploads on several hosts: the staging storage, host-aware retries, and staged bytes that are
missing here (never failed for good: retried with backoff, shown to staff, alerted)."""

from __future__ import annotations

from datetime import timedelta

import pytest
import time_machine
from django.core.exceptions import ImproperlyConfigured
from django.core.files.storage import Storage, storages
from django.test import TestCase
from django.utils import timezone

from core.ops import DEGRADED
from outbox.models import OutboxEvent
from outbox.services import target_create
from tests.uploads.factories import staged_attachment
from tests.uploads.test_tus_protocol import _path, create, patch
from uploads import staging, tasks
from uploads.models import Attachment
from uploads.ops import status_findings


def _sweep():
    with TestCase.captureOnCommitCallbacks(execute=True):
        return tasks.retry_sweep()


def _due(attachment):
    return time_machine.travel(attachment.next_retry_at + timedelta(seconds=1), tick=False)


@pytest.mark.django_db
def test_missing_staged_bytes_stay_pending_with_backoff_and_are_stored_once_back(
    tenant, settings, storage_switch
):
    # the incident: host B's retry run marked an upload failed while its bytes sat on host A
    settings.UPLOADS_STAGING_SHARED = True
    settings.UPLOADS_MAX_ATTEMPTS = 2
    attachment = staged_attachment(tenant, b"on host a", staging_host="host-a")
    path = staging.staging_path(tenant_id=tenant.pk, attachment_id=attachment.pk)
    away = path.with_name("away")
    path.rename(away)  # e.g. the shared volume is not mounted on this host for a while
    for _ in range(3):  # more attempts than UPLOADS_MAX_ATTEMPTS
        with _due(attachment):
            assert _sweep()["failed"] == 1
        attachment.refresh_from_db()
        assert attachment.status == "pending", attachment.last_error
        assert "staged bytes missing" in attachment.last_error
        assert "host-a" in attachment.last_error
    assert attachment.attempts == 3 and attachment.staged_missing_since is not None
    gap = (attachment.next_retry_at - attachment.last_attempt_at).total_seconds()
    assert gap == settings.UPLOADS_RETRY_BACKOFF_BASE_SECONDS * 4  # the backoff keeps growing

    away.rename(path)
    with _due(attachment):
        assert _sweep()["succeeded"] == 1
    attachment.refresh_from_db()
    assert attachment.status == "stored" and attachment.staged_missing_since is None
    assert [p.read_bytes() for p in storage_switch.files()] == [b"on host a"]


@pytest.mark.django_db
def test_host_local_staging_leaves_another_hosts_attachment_alone(tenant, settings):
    settings.UPLOADS_STAGING_SHARED = False
    attachment = staged_attachment(tenant, staging_host="host-a")
    settings.ATLAS_HOST_NAME = "host-b"
    assert _sweep() == {"attempted": 0, "succeeded": 0, "failed": 0}
    attachment.refresh_from_db()
    assert (attachment.status, attachment.attempts, attachment.last_error) == ("pending", 0, "")

    settings.ATLAS_HOST_NAME = "host-a"
    assert _sweep()["succeeded"] == 1
    assert Attachment.objects.get().status == "stored"


@pytest.mark.django_db
def test_shared_staging_lets_any_host_finalise(tenant, settings):
    settings.UPLOADS_STAGING_SHARED = True
    staged_attachment(tenant, staging_host="host-a")
    settings.ATLAS_HOST_NAME = "host-b"
    assert _sweep()["succeeded"] == 1
    assert Attachment.objects.get().status == "stored"


@pytest.mark.django_db
def test_uploads_record_the_host_that_staged_them(api, tenant, settings):
    settings.ATLAS_HOST_NAME = "web-7"
    response = api.post("/api/uploads/", {"file": _file(b"abc")}, format="multipart")
    assert response.status_code == 201, response.content
    assert create(api, 3, filename="b.txt").status_code == 201
    assert list(Attachment.objects.values_list("staging_host", flat=True)) == ["web-7"] * 2


@pytest.mark.django_db
def test_tus_patch_on_a_host_without_the_staged_file_is_refused_without_writing(api, tenant):
    url = _path(create(api, 3, filename="c.txt")["Location"])
    attachment = Attachment.objects.get()
    staging.staging_path(tenant_id=tenant.pk, attachment_id=attachment.pk).unlink()
    response = patch(api, url, b"abc", 0)
    assert response.status_code == 503, response.content
    attachment.refresh_from_db()
    assert attachment.upload_offset == 0 and attachment.status == "receiving"


@pytest.mark.django_db
def test_missing_bytes_are_alerted_to_slack_once_after_the_threshold(tenant, settings):
    settings.UPLOADS_STAGING_SHARED = True
    settings.UPLOADS_MISSING_ALERT_ATTEMPTS = 2
    target_create(tenant=tenant, name="slack", kind="slack", url="https://hooks.slack.example/x")
    attachment = staged_attachment(tenant, staging_host="host-a")
    staging.staging_path(tenant_id=tenant.pk, attachment_id=attachment.pk).unlink()
    _sweep()
    assert tasks.health_alert_check() == 0  # one attempt: below the threshold
    attachment.refresh_from_db()
    with _due(attachment):
        _sweep()
    assert tasks.health_alert_check() == 1
    assert tasks.health_alert_check() == 0  # once per attachment
    event = OutboxEvent.objects.get(event_type="uploads.staged_bytes_missing")
    assert event.payload["attachmentId"] == str(attachment.pk)
    assert event.payload["stagingHost"] == "host-a"
    attachment.refresh_from_db()
    assert attachment.status == "pending" and attachment.missing_alerted_at is not None


@pytest.mark.django_db
def test_admin_filter_and_health_page_show_missing_bytes(admin_client, tenant, settings):
    settings.UPLOADS_STAGING_SHARED = True
    waiting = staged_attachment(tenant, filename="waiting.pdf", staging_host="host-a")
    staging.staging_path(tenant_id=tenant.pk, attachment_id=waiting.pk).unlink()
    staged_attachment(tenant, filename="fine.pdf", next_retry_at=timezone.now() + timedelta(1))
    _sweep()
    page = admin_client.get("/admin/uploads/attachment/?staged_bytes=missing").content.decode()
    assert "waiting.pdf" in page and "fine.pdf" not in page
    health = admin_client.get("/admin/uploads/retrylog/health/").content.decode()
    assert f'data-attachment="{waiting.pk}"' in health and "host-a" in health


def test_staging_storage_location_comes_from_its_options(settings, tmp_path):
    settings.STORAGES = {
        **settings.STORAGES,
        "staging": {
            "BACKEND": "uploads.staging.StagingStorage",
            "OPTIONS": {"location": str(tmp_path / "shared")},
        },
    }
    assert staging.staging_root() == tmp_path / "shared"


def test_staging_storage_follows_uploads_staging_dir_by_default(settings, tmp_path):
    settings.UPLOADS_STAGING_DIR = tmp_path / "elsewhere"
    assert staging.staging_root() == tmp_path / "elsewhere"


def test_a_staging_storage_without_local_paths_is_refused(settings):
    settings.STORAGES = {
        **settings.STORAGES,
        "staging": {"BACKEND": "django.core.files.storage.Storage"},  # path() not implemented
    }
    assert type(storages["staging"]) is Storage
    with pytest.raises(ImproperlyConfigured, match="no local paths"):
        staging.staging_root()


def _file(data: bytes):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return SimpleUploadedFile("a.txt", data, content_type="text/plain")


@pytest.mark.django_db
def test_status_finding_is_degraded_while_staged_bytes_are_missing(tenant, settings):
    settings.UPLOADS_STAGING_SHARED = True
    attachment = staged_attachment(tenant)
    staging.staging_path(tenant_id=tenant.pk, attachment_id=attachment.pk).unlink()
    _sweep()
    (finding,) = status_findings(now=timezone.now())
    assert finding.level == DEGRADED and "1 waiting for staged bytes" in finding.summary
