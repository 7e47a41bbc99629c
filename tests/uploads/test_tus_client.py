"""A standard tus client (tuspy) against a real HTTP server (live_server), including a resume
after the connection was cut in the middle of a PATCH body."""

from __future__ import annotations

import hashlib
import io
import os
import socket
import time
from urllib.parse import urlsplit

import pytest
import requests
from tusclient import client as tus_client

from outbox.models import OutboxEvent
from tests.factories import make_api_key
from uploads.models import Attachment

pytestmark = [pytest.mark.django_db(transaction=True)]


@pytest.fixture
def tus(live_server, tenant):
    key = make_api_key(tenant, "secret")
    return tus_client.TusClient(
        f"{live_server.url}/api/uploads/tus/", headers={"Authorization": f"Bearer {key}"}
    )


def _wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_tuspy_uploads_in_checksummed_chunks_and_file_is_stored(tus, tenant, storage_switch):
    data = os.urandom(700_000)
    uploader = tus.uploader(
        file_stream=io.BytesIO(data),
        chunk_size=256 * 1024,
        upload_checksum=True,  # Upload-Checksum: sha1 <base64> on every PATCH
        metadata={
            "filename": "scan.bin",
            "filetype": "application/octet-stream",
            "sha256": hashlib.sha256(data).hexdigest(),
        },
    )
    uploader.upload()

    row = Attachment.objects.get()
    assert uploader.url.endswith(f"/api/uploads/tus/{row.pk}")
    assert (row.tenant_id, row.status, row.size, row.channel) == (
        tenant.pk,
        "stored",
        700_000,
        "tus",
    )
    assert row.sha256 == hashlib.sha256(data).hexdigest()
    assert [p.read_bytes() for p in storage_switch.files()] == [data]
    assert OutboxEvent.objects.filter(event_type="upload.stored", tenant=tenant).count() == 1


def _cut_patch(url: str, auth: str, body: bytes, announced: int):
    """Send a PATCH announcing `announced` bytes, send only `body`, then drop the connection."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port))
    head = (
        f"PATCH {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Authorization: {auth}\r\nTus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\n"
        f"Content-Type: application/offset+octet-stream\r\nContent-Length: {announced}\r\n\r\n"
    ).encode()
    sock.sendall(head + body)
    sock.shutdown(socket.SHUT_WR)
    sock.close()


def test_upload_resumes_from_last_acknowledged_offset_after_cut_connection(
    tus, tenant, storage_switch
):
    data = os.urandom(1_000_000)
    first = tus.uploader(file_stream=io.BytesIO(data), chunk_size=len(data),
                         metadata={"filename": "big.bin"})  # fmt: skip
    first.set_url(first.create_url())
    row_id = first.url.rsplit("/", 1)[1]

    _cut_patch(first.url, tus.headers["Authorization"], data[:300_000], announced=len(data))
    assert _wait_for(lambda: Attachment.objects.get(pk=row_id).upload_offset == 300_000)

    head = requests.head(first.url, headers={**tus.headers, "Tus-Resumable": "1.0.0"})
    assert head.status_code == 200
    assert head.headers["Upload-Offset"] == "300000"
    assert head.headers["Cache-Control"] == "no-store"

    resumed = tus.uploader(file_stream=io.BytesIO(data), url=first.url, chunk_size=256 * 1024)
    assert resumed.offset == 300_000  # tuspy asked the server (HEAD) where to continue
    resumed.upload()

    row = Attachment.objects.get(pk=row_id)
    assert row.status == "stored" and row.sha256 == hashlib.sha256(data).hexdigest()
    assert [p.read_bytes() for p in storage_switch.files()] == [data]
    assert OutboxEvent.objects.filter(event_type="upload.stored").count() == 1


def test_tuspy_sees_409_for_a_stale_offset(tus):
    data = b"x" * 1000
    uploader = tus.uploader(file_stream=io.BytesIO(data), chunk_size=400)
    uploader.upload(stop_at=400)
    uploader.offset = 0  # a confused client re-sends the first chunk
    with pytest.raises(Exception) as failure:
        uploader.upload_chunk()
    assert getattr(failure.value, "status_code", None) == 409
    assert Attachment.objects.get().upload_offset == 400
