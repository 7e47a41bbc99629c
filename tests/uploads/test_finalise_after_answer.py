"""The last PATCH answers once its bytes are acknowledged; storage comes right after, on the
web process's finisher thread (UPLOADS_FINALISE_IN_BACKGROUND, on in production). The client
never waits for the copy or link into storage, and the upload still ends stored with its real
SHA-256 and one upload.stored event. (A process killed before the finisher is done:
tests/uploads/test_finalise_crash.py.)"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

import pytest

from outbox.models import OutboxEvent
from tests.uploads.test_tus_protocol import _path, create, patch
from uploads import staging
from uploads.models import Attachment
from uploads.services import background

# the finisher thread has its own database connection: it sees committed rows only
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def in_background(settings):
    settings.UPLOADS_FINALISE_IN_BACKGROUND = True
    yield
    assert background.finisher_drain()  # and its database connection closed


@pytest.fixture
def plain_storage(settings, upload_dirs):
    location = Path(settings.UPLOADS_STORAGE_DIR)
    settings.STORAGES = {
        **settings.STORAGES,
        "attachments": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(location)},
        },
    }
    return location


def _wait_stored(pk, seconds: float = 20.0) -> Attachment:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        attachment = Attachment.objects.get(pk=pk)
        if attachment.status == "stored":
            return attachment
        time.sleep(0.02)
    raise AssertionError(f"not stored after {seconds} s: {attachment.status}")


def test_the_answer_comes_before_storage_and_the_upload_ends_stored(
    api, tenant, in_background, plain_storage, monkeypatch
):
    """The finisher is held until the client has its 204: at that moment the bytes are
    acknowledged (pending, real SHA-256, claimed) and nothing is in storage yet."""
    release = threading.Event()
    real = background.attachment_finalise

    def held(**kwargs):
        assert release.wait(20)
        return real(**kwargs)

    monkeypatch.setattr(background, "attachment_finalise", held)
    data = os.urandom(200_000)
    url = _path(create(api, len(data))["Location"])
    answer = patch(api, url, data, 0)
    assert answer.status_code == 204 and answer["Upload-Offset"] == str(len(data))
    pk = url.rsplit("/", 1)[1]
    attachment = Attachment.objects.get(pk=pk)
    assert (attachment.status, attachment.sha256) == ("pending", hashlib.sha256(data).hexdigest())
    assert attachment.claimed_by is not None
    assert not [p for p in plain_storage.rglob("*") if p.is_file()]

    release.set()
    attachment = _wait_stored(pk)
    assert attachment.sha256 == hashlib.sha256(data).hexdigest()
    (stored,) = [p for p in plain_storage.rglob("*") if p.is_file()]
    assert stored.read_bytes() == data
    assert not staging.staging_path(tenant_id=tenant.pk, attachment_id=pk).exists()
    events = OutboxEvent.objects.filter(event_type="upload.stored")
    assert [e.payload["sha256"] for e in events] == [attachment.sha256]


def test_many_uploads_in_a_row_all_end_stored(api, in_background, plain_storage):
    blobs = [os.urandom(50_000 + i) for i in range(8)]
    pks = []
    for data in blobs:
        url = _path(create(api, len(data))["Location"])
        assert patch(api, url, data, 0).status_code == 204
        pks.append(url.rsplit("/", 1)[1])
    for pk, data in zip(pks, blobs, strict=True):
        assert _wait_stored(pk).sha256 == hashlib.sha256(data).hexdigest()
    assert OutboxEvent.objects.filter(event_type="upload.stored").count() == len(blobs)


def test_a_finisher_failure_leaves_the_upload_to_the_retry_run(
    api, in_background, plain_storage, monkeypatch
):
    """Storage down when the finisher runs: the upload is not lost, it waits (pending, with
    its attempt recorded) for the retry schedule, as an inline failure would."""
    from django.core.files.storage import FileSystemStorage

    def refuse(*args, **kwargs):
        raise OSError("storage is down")

    monkeypatch.setattr(FileSystemStorage, "save", refuse)
    monkeypatch.setattr(os, "link", refuse)
    data = os.urandom(30_000)
    url = _path(create(api, len(data))["Location"])
    assert patch(api, url, data, 0).status_code == 204
    pk = url.rsplit("/", 1)[1]
    deadline = time.monotonic() + 20
    while Attachment.objects.get(pk=pk).attempts == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    attachment = Attachment.objects.get(pk=pk)
    assert attachment.status == "pending" and attachment.attempts == 1
    assert attachment.last_error and attachment.claimed_by is None
