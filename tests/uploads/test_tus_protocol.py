"""The tus 1.0 server, request by request (core, creation, checksum, expiration, termination)."""

from __future__ import annotations

import base64
import hashlib
import uuid
from datetime import timedelta

import pytest
import time_machine
from django.test import TestCase
from django.utils import timezone

from outbox.models import OutboxEvent
from tests.tenancy import assert_error, assert_tenant_isolated
from uploads import staging
from uploads.models import Attachment

pytestmark = pytest.mark.django_db
TUS = "/api/uploads/tus/"
V = {"HTTP_TUS_RESUMABLE": "1.0.0"}


def _b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


def _metadata(**values) -> str:
    return ",".join(f"{k} {_b64(v)}" for k, v in values.items())


def create(client, length, **metadata):
    headers = {**V, "HTTP_UPLOAD_LENGTH": str(length)}
    if metadata:
        headers["HTTP_UPLOAD_METADATA"] = _metadata(**metadata)
    return client.post(TUS, **headers)


def patch(client, url, body: bytes, offset: int, **headers):
    with TestCase.captureOnCommitCallbacks(execute=True):
        return client.generic(
            "PATCH",
            url,
            data=body,
            content_type=headers.pop("content_type", "application/offset+octet-stream"),
            **{**V, "HTTP_UPLOAD_OFFSET": str(offset), **headers},
        )


def _checksum(algorithm: str, body: bytes) -> str:
    digest = hashlib.new(algorithm, body).digest()
    return f"{algorithm} {base64.b64encode(digest).decode()}"


def _path(url: str) -> str:
    return "/" + url.split("/", 3)[3]


def test_options_advertises_version_extensions_limits_and_checksums(anon_api, settings):
    response = anon_api.options(TUS)
    assert response.status_code == 204
    assert response["Tus-Resumable"] == "1.0.0"
    assert response["Tus-Version"] == "1.0.0"
    extensions = set(response["Tus-Extension"].split(","))
    assert {"creation", "checksum", "expiration", "termination"} <= extensions
    assert response["Tus-Max-Size"] == str(settings.UPLOADS_MAX_BYTES)
    assert set(response["Tus-Checksum-Algorithm"].split(",")) == {"sha1", "sha256", "md5"}


def test_missing_tus_resumable_is_412_with_json_error(api):
    response = api.post(TUS, HTTP_UPLOAD_LENGTH="10")
    assert_error(response, 412, "unsupported_tus_version")
    assert response["Tus-Version"] == "1.0.0"
    assert Attachment.objects.count() == 0


def test_creation_returns_location_ending_with_attachment_id(api, tenant):
    upload_id = str(uuid.uuid4())
    response = create(api, 11, filename="a.txt", filetype="text/plain", uploadId=upload_id)
    assert response.status_code == 201
    assert response["Location"].endswith(f"/api/uploads/tus/{upload_id}")
    assert response["Tus-Resumable"] == "1.0.0"
    assert "GMT" in response["Upload-Expires"]
    row = Attachment.objects.get(pk=upload_id)
    assert (row.tenant_id, row.status, row.size, row.upload_offset) == (
        tenant.pk,
        "receiving",
        11,
        0,
    )
    assert (row.filename, row.content_type, row.channel) == ("a.txt", "text/plain", "tus")
    assert staging.staging_path(tenant_id=tenant.pk, attachment_id=upload_id).exists()


def test_recreating_an_unfinished_upload_returns_the_same_url(api):
    upload_id = str(uuid.uuid4())
    first = create(api, 11, uploadId=upload_id)
    again = create(api, 11, uploadId=upload_id)
    assert again.status_code == 201 and again["Location"] == first["Location"]
    assert Attachment.objects.count() == 1
    assert_error(create(api, 12, uploadId=upload_id), 409, "upload_exists")


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "upload_length_required"),
        ({"HTTP_UPLOAD_LENGTH": "-1"}, "invalid_upload_length"),
        ({"HTTP_UPLOAD_LENGTH": "abc"}, "invalid_upload_length"),
        ({"HTTP_UPLOAD_DEFER_LENGTH": "1"}, "defer_length_not_supported"),
        (
            {"HTTP_UPLOAD_LENGTH": "5", "HTTP_UPLOAD_METADATA": "filename !!!"},
            "invalid_upload_metadata",
        ),
        ({"HTTP_UPLOAD_LENGTH": "5", "HTTP_UPLOAD_METADATA": "a b c"}, "invalid_upload_metadata"),
        (
            {"HTTP_UPLOAD_LENGTH": "5", "HTTP_UPLOAD_METADATA": "k " + "QUFB" * 1100},
            "invalid_upload_metadata",
        ),
        (
            {"HTTP_UPLOAD_LENGTH": "5", "HTTP_UPLOAD_METADATA": f"uploadId {_b64('x')}"},
            "invalid_upload_id",
        ),
        (
            {"HTTP_UPLOAD_LENGTH": "5", "HTTP_UPLOAD_METADATA": f"sha256 {_b64('abc')}"},
            "invalid_sha256",
        ),
    ],
)
def test_bad_creation_requests_are_400_with_own_code(api, headers, code):
    assert_error(api.post(TUS, **V, **headers), 400, code)
    assert Attachment.objects.count() == 0


def test_creation_over_max_size_is_413(api, settings):
    settings.UPLOADS_MAX_BYTES = 100
    assert_error(create(api, 101), 413, "file_too_large")
    assert Attachment.objects.count() == 0


def test_creation_with_refused_content_type_is_415(api, settings):
    settings.UPLOADS_ALLOWED_CONTENT_TYPES = ["image/png"]
    assert_error(create(api, 5, filetype="text/html"), 415, "content_type_not_allowed")
    assert create(api, 5, filetype="image/png").status_code == 201


def test_chunks_with_checksums_complete_and_store(api, storage_switch):
    data = b"0123456789" * 1000
    url = _path(
        create(api, len(data), filename="d.bin", sha256=hashlib.sha256(data).hexdigest())[
            "Location"
        ]
    )
    offset = 0
    for algorithm, size in (("sha1", 3000), ("sha256", 3000), ("md5", 4000)):
        chunk = data[offset : offset + size]
        response = patch(api, url, chunk, offset, HTTP_UPLOAD_CHECKSUM=_checksum(algorithm, chunk))
        assert response.status_code == 204, response.content
        offset += size
        assert response["Upload-Offset"] == str(offset)
    row = Attachment.objects.get()
    assert row.status == "stored" and row.sha256 == hashlib.sha256(data).hexdigest()
    assert storage_switch.files()[0].read_bytes() == data
    assert OutboxEvent.objects.filter(event_type="upload.stored").count() == 1


def test_head_reports_offset_and_is_not_cached(api):
    url = _path(create(api, 10, filename="a.txt", filetype="text/plain")["Location"])
    patch(api, url, b"12345", 0)
    response = api.head(url, **V)
    assert response.status_code == 200
    assert response["Upload-Offset"] == "5" and response["Upload-Length"] == "10"
    assert response["Cache-Control"] == "no-store"
    assert response["Tus-Resumable"] == "1.0.0"
    assert response["Upload-Metadata"] == _metadata(filename="a.txt", filetype="text/plain")
    assert "GMT" in response["Upload-Expires"]


def test_wrong_offset_is_409_and_changes_nothing(api):
    url = _path(create(api, 10)["Location"])
    patch(api, url, b"12345", 0)
    error = assert_error(patch(api, url, b"67890", 3), 409, "offset_mismatch")
    assert error["details"] == {"expected": 5, "received": 3}
    assert Attachment.objects.get().upload_offset == 5


def test_checksum_mismatch_is_460_and_chunk_is_discarded(api, tenant):
    url = _path(create(api, 10)["Location"])
    response = patch(api, url, b"12345", 0, HTTP_UPLOAD_CHECKSUM=_checksum("sha1", b"other"))
    assert_error(response, 460, "checksum_mismatch")
    row = Attachment.objects.get()
    assert row.upload_offset == 0
    assert staging.staging_path(tenant_id=tenant.pk, attachment_id=row.pk).stat().st_size == 0


@pytest.mark.parametrize(
    ("header", "code"),
    [
        ("crc32 AAAA", "unsupported_checksum_algorithm"),
        ("sha1", "invalid_checksum_header"),
        ("sha1 ***", "invalid_checksum_header"),
    ],  # fmt: skip
)
def test_bad_checksum_header_is_400(api, header, code):
    url = _path(create(api, 10)["Location"])
    assert_error(patch(api, url, b"12345", 0, HTTP_UPLOAD_CHECKSUM=header), 400, code)
    assert Attachment.objects.get().upload_offset == 0


def test_whole_file_sha256_mismatch_is_460_and_nothing_kept(api, storage_switch):
    url = _path(create(api, 5, sha256="a" * 64)["Location"])
    assert_error(patch(api, url, b"12345", 0), 460, "checksum_mismatch")
    assert Attachment.objects.count() == 0
    assert storage_switch.files() == []
    assert not any(p.is_file() for p in staging.staging_root().rglob("*"))


def test_patch_needs_offset_octet_stream(api):
    url = _path(create(api, 10)["Location"])
    assert_error(
        patch(api, url, b"12345", 0, content_type="text/plain"), 415, "invalid_content_type"
    )


def test_patch_past_upload_length_is_413(api):
    url = _path(create(api, 4)["Location"])
    assert_error(patch(api, url, b"12345", 0), 413, "upload_length_exceeded")
    assert Attachment.objects.get().upload_offset == 0


def test_patch_without_offset_is_400(api):
    url = _path(create(api, 4)["Location"])
    response = api.generic(
        "PATCH", url, data=b"1", content_type="application/offset+octet-stream", **V
    )
    assert_error(response, 400, "invalid_upload_offset")


def test_method_override_turns_post_into_patch(api):
    url = _path(create(api, 5)["Location"])
    response = api.generic(
        "POST",
        url,
        data=b"12345",
        content_type="application/offset+octet-stream",
        HTTP_X_HTTP_METHOD_OVERRIDE="PATCH",
        HTTP_UPLOAD_OFFSET="0",
        **V,
    )
    assert response.status_code == 204
    assert Attachment.objects.get().status == "stored"


def test_creation_with_upload_takes_the_first_bytes(api):
    response = api.generic(
        "POST",
        TUS,
        data=b"hello",
        content_type="application/offset+octet-stream",
        HTTP_UPLOAD_LENGTH="10",
        **V,
    )
    assert response.status_code == 201
    assert response["Upload-Offset"] == "5"
    assert Attachment.objects.get().upload_offset == 5


def test_expired_upload_is_410(api):
    url = _path(create(api, 10)["Location"])
    with time_machine.travel(timezone.now() + timedelta(hours=25)):
        assert_error(patch(api, url, b"12345", 0), 410, "upload_expired")
        head = api.head(url, **V)
        assert head.status_code == 410 and head.content == b""
    assert Attachment.objects.get().upload_offset == 0


def test_expired_uploads_are_cleaned_up(api, tenant):
    url = _path(create(api, 10)["Location"])
    row = Attachment.objects.get()
    from uploads.services.tus import uploads_expired_cleanup

    assert uploads_expired_cleanup() == 0
    assert uploads_expired_cleanup(now=timezone.now() + timedelta(hours=25)) == 1
    assert Attachment.objects.count() == 0
    assert not staging.staging_path(tenant_id=tenant.pk, attachment_id=row.pk).exists()
    assert api.head(url, **V).status_code == 404


def test_termination_removes_upload_and_bytes(api, tenant):
    url = _path(create(api, 10)["Location"])
    row = Attachment.objects.get()
    patch(api, url, b"12345", 0)
    response = api.delete(url, **V)
    assert response.status_code == 204
    assert Attachment.objects.count() == 0
    assert not staging.staging_path(tenant_id=tenant.pk, attachment_id=row.pk).exists()
    assert api.head(url, **V).status_code == 404


def test_finished_upload_cannot_be_terminated(api):
    url = _path(create(api, 5)["Location"])
    patch(api, url, b"12345", 0)
    assert_error(api.delete(url, **V), 409, "upload_complete")
    assert Attachment.objects.get().status == "stored"


def test_other_tenant_cannot_see_or_touch_an_upload(api, other_api):
    url = _path(create(api, 10)["Location"])
    other_api.credentials(**other_api._credentials, **V)
    offset = lambda: Attachment.objects.get().upload_offset  # noqa: E731
    assert other_api.head(url).status_code == 404
    response = other_api.generic(
        "PATCH", url, data=b"12345", content_type="application/offset+octet-stream",
        HTTP_UPLOAD_OFFSET="0",
    )  # fmt: skip
    assert_error(response, 404, "not_found")
    assert_tenant_isolated(other_api, "delete", url, unchanged=offset)
    assert Attachment.objects.count() == 1


def test_publishable_key_can_use_tus(browser_api):
    response = create(browser_api, 3)
    assert response.status_code == 201
    assert patch(browser_api, _path(response["Location"]), b"abc", 0).status_code == 204


def test_tus_requires_a_key(anon_api):
    assert_error(create(anon_api, 3), 401, "authentication_required")
    assert Attachment.objects.count() == 0


def test_zero_length_upload_is_stored_at_creation(api):
    response = create(api, 0, filename="empty.txt")
    assert response.status_code == 201
    assert Attachment.objects.get().status == "stored"


def test_a_second_writer_on_the_same_upload_gets_423(api):
    import threading

    from django.db import connections

    from uploads.services.tus import UploadLock

    url = _path(create(api, 10)["Location"])
    upload_id = Attachment.objects.get().pk
    held, release = threading.Event(), threading.Event()

    def other_writer():  # another web process in the middle of a PATCH on this upload
        try:
            with UploadLock(upload_id):
                held.set()
                release.wait(10)
        finally:
            connections.close_all()

    thread = threading.Thread(target=other_writer)
    thread.start()
    try:
        assert held.wait(10)
        assert_error(patch(api, url, b"12345", 0), 423, "upload_locked")
        assert_error(api.delete(url, **V), 423, "upload_locked")
    finally:
        release.set()
        thread.join(10)
    assert patch(api, url, b"12345", 0).status_code == 204


def test_client_can_start_over_with_the_same_id_after_expiry(api):
    upload_id = str(uuid.uuid4())
    url = _path(create(api, 10, uploadId=upload_id)["Location"])
    patch(api, url, b"12345", 0)
    with time_machine.travel(timezone.now() + timedelta(hours=25)):
        assert_error(patch(api, url, b"67890", 5), 410, "upload_expired")
        again = create(api, 10, uploadId=upload_id)
        assert again.status_code == 201 and _path(again["Location"]) == url
        assert Attachment.objects.get().upload_offset == 0  # a fresh upload
        assert patch(api, url, b"0123456789", 0).status_code == 204
    assert Attachment.objects.get().status == "stored"
