"""The hourly clean-up: expired tus uploads and staging files no row needs any more."""

from __future__ import annotations

import os
import time
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from tests.uploads.factories import staged_attachment
from uploads import staging, tasks
from uploads.models import Attachment

pytestmark = pytest.mark.django_db
HOURS_AGO_2 = time.time() - 2 * 3600


def _file(path, *, old: bool):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"left behind")
    if old:
        os.utime(path, (HOURS_AGO_2, HOURS_AGO_2))
    return path


def _age(attachment):
    path = staging.staging_path(tenant_id=attachment.tenant_id, attachment_id=attachment.pk)
    os.utime(path, (HOURS_AGO_2, HOURS_AGO_2))
    return path


def test_the_schedule_removes_orphans_and_expired_uploads_and_keeps_the_rest(tenant, settings):
    settings.UPLOADS_STAGING_ORPHAN_GRACE_MINUTES = 60
    incoming = staging.staging_root() / "incoming"
    old_part = _file(incoming / "deadbeef.part", old=True)
    fresh_part = _file(incoming / "cafebabe.part", old=False)  # a body being received now
    tenant_dir = staging.staging_root() / str(tenant.pk)
    old_orphan = _file(tenant_dir / str(uuid.uuid4()), old=True)  # no row refers to it
    fresh_orphan = _file(tenant_dir / str(uuid.uuid4()), old=False)  # its row may not be
    # committed yet
    stranger = _file(tenant_dir / "notes.txt", old=True)  # not ours to judge

    pending = _age(staged_attachment(tenant, b"pending"))
    failed = _age(staged_attachment(tenant, b"failed", status="failed"))
    open_tus = staged_attachment(
        tenant, b"", channel="tus", status="receiving", size=10, upload_offset=0,
        sha256="", expires_at=timezone.now() + timedelta(hours=1),
    )  # fmt: skip
    open_path = _age(open_tus)
    expired_tus = staged_attachment(
        tenant, b"", channel="tus", status="receiving", size=10, upload_offset=0,
        sha256="", expires_at=timezone.now() - timedelta(minutes=1),
    )  # fmt: skip
    expired_path = staging.staging_path(tenant_id=tenant.pk, attachment_id=expired_tus.pk)
    stored = staged_attachment(
        tenant, b"stored", status="stored", storage_name="x/y", stored_at=timezone.now()
    )
    stored_leftover = _age(stored)  # its copy is in storage; the staged one was not removed

    result = tasks.expired_uploads_cleanup()

    assert result == {"expired": 1, "orphans": 3}
    assert not Attachment.objects.filter(pk=expired_tus.pk).exists()
    assert not expired_path.exists()
    for gone in (old_part, old_orphan, stored_leftover):
        assert not gone.exists(), gone
    for kept in (fresh_part, fresh_orphan, stranger, pending, failed, open_path):
        assert kept.exists(), kept
    assert Attachment.objects.count() == 4
    assert tasks.expired_uploads_cleanup() == {"expired": 0, "orphans": 0}


def test_cleanup_with_an_empty_staging_area(settings):
    assert not staging.staging_root().exists()
    assert tasks.expired_uploads_cleanup() == {"expired": 0, "orphans": 0}
