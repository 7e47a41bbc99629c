"""POST /api/uploads/ (multipart) and GET /api/uploads/{id}."""

from __future__ import annotations

import hashlib
import uuid

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import TestCase

from assessments.models import AssessmentSession
from outbox.models import OutboxEvent
from tests.tenancy import assert_error, assert_tenant_isolated
from uploads import staging
from uploads.models import Attachment, FinaliseAttempt

URL = "/api/uploads/"
pytestmark = pytest.mark.django_db


def _file(data=b"hello world", name="notes.txt", content_type="text/plain"):
    return SimpleUploadedFile(name, data, content_type=content_type)


def _post(client, data=b"hello world", **fields):
    """POST like a real request: on-commit hooks (staging clean-up) run as after a commit."""
    headers = {k: fields.pop(k) for k in list(fields) if k.startswith("HTTP_")}
    payload = {"file": _file(data, **fields.pop("file_kw", {})), **fields}
    with TestCase.captureOnCommitCallbacks(execute=True):
        return client.post(URL, payload, format="multipart", **headers)


def _staging_files():
    root = staging.staging_root()
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_upload_is_stored_verified_and_announced(api, tenant, storage_switch):
    data = b"a" * 100_000
    upload_id = uuid.uuid4()
    response = _post(api, data, uploadId=str(upload_id), sha256=hashlib.sha256(data).hexdigest())

    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["id"] == str(upload_id)
    assert body["status"] == "stored"
    assert body["size"] == len(data)
    assert body["sha256"] == hashlib.sha256(data).hexdigest()
    assert body["attempts"] == 1
    row = Attachment.objects.get(pk=upload_id)
    assert row.tenant_id == tenant.pk and row.stored_at is not None
    stored = storage_switch.files()
    assert len(stored) == 1 and stored[0].read_bytes() == data
    assert _staging_files() == []  # staged bytes removed once stored
    event = OutboxEvent.objects.get(event_type="upload.stored")
    assert event.topic == "uploads" and event.tenant_id == tenant.pk
    assert event.payload["attachmentId"] == str(upload_id)
    assert event.payload["sha256"] == body["sha256"]
    assert event.idempotency_key == f"upload.stored:{upload_id}"


def test_publishable_key_from_its_origin_may_upload(browser_api):
    response = _post(browser_api, b"from the browser")
    assert response.status_code == 201
    assert response.json()["status"] == "stored"


def test_checksum_mismatch_keeps_nothing(api, storage_switch):
    response = _post(api, b"real bytes", sha256="0" * 64)
    assert_error(response, 400, "checksum_mismatch")
    assert Attachment.objects.count() == 0
    assert _staging_files() == [] and storage_switch.files() == []
    assert OutboxEvent.objects.count() == 0


def test_resending_same_upload_id_and_bytes_returns_the_original(api):
    upload_id = str(uuid.uuid4())
    first = _post(api, b"same bytes", uploadId=upload_id)
    again = _post(api, b"same bytes", uploadId=upload_id)
    assert first.status_code == 201 and again.status_code == 200
    assert again.json()["id"] == upload_id
    assert Attachment.objects.count() == 1
    assert OutboxEvent.objects.filter(event_type="upload.stored").count() == 1
    assert _staging_files() == []


def test_same_upload_id_with_other_bytes_is_409(api):
    upload_id = str(uuid.uuid4())
    assert _post(api, b"first bytes", uploadId=upload_id).status_code == 201
    response = _post(api, b"other bytes", uploadId=upload_id)
    assert_error(response, 409, "upload_id_conflict")
    assert Attachment.objects.get(pk=upload_id).sha256 == hashlib.sha256(b"first bytes").hexdigest()
    assert _staging_files() == []


def test_upload_id_of_another_tenant_is_a_conflict_not_a_leak(api, other_api):
    upload_id = str(uuid.uuid4())
    assert _post(api, b"acme bytes", uploadId=upload_id).status_code == 201
    response = _post(other_api, b"acme bytes", uploadId=upload_id)
    error = assert_error(response, 409, "upload_id_conflict")
    assert "status" not in error["details"]
    assert Attachment.objects.count() == 1


def test_oversized_file_is_413_and_nothing_kept(api, settings, storage_switch):
    settings.UPLOADS_MAX_BYTES = 1000
    response = _post(api, b"x" * 5000)
    assert_error(response, 413, "file_too_large")
    assert Attachment.objects.count() == 0 and _staging_files() == []


def test_body_announced_far_over_the_limit_is_refused_before_reading(api, settings):
    settings.UPLOADS_MAX_BYTES = 1000
    response = _post(api, b"x" * 200_000)  # Content-Length alone says it is too big
    assert_error(response, 413, "file_too_large")
    assert Attachment.objects.count() == 0 and _staging_files() == []


def test_content_type_outside_allow_list_is_415(api, settings):
    settings.UPLOADS_ALLOWED_CONTENT_TYPES = ["image/*", "application/pdf"]
    response = _post(api, b"MZ...", file_kw={"name": "a.exe", "content_type": "application/x-exe"})
    assert_error(response, 415, "content_type_not_allowed")
    assert Attachment.objects.count() == 0 and _staging_files() == []
    ok = _post(api, b"\x89PNG", file_kw={"name": "a.png", "content_type": "image/png"})
    assert ok.status_code == 201


def test_missing_file_field_is_400(api):
    response = api.post(URL, {"uploadId": str(uuid.uuid4())}, format="multipart")
    assert_error(response, 400, "file_required")
    assert Attachment.objects.count() == 0


def test_json_body_is_415(api):
    response = api.post(URL, {"file": "nope"}, format="json")
    assert_error(response, 415, "unsupported_media_type")


def test_bad_upload_id_is_validation_error_and_nothing_kept(api):
    response = _post(api, b"data", uploadId="not-a-uuid")
    assert_error(response, 400, "validation_error")
    assert Attachment.objects.count() == 0 and _staging_files() == []


def test_unknown_assessment_session_is_400(api, other_tenant):
    foreign = AssessmentSession.objects.create(tenant=other_tenant)
    response = _post(api, b"data", assessmentSessionId=str(foreign.pk))
    assert_error(response, 400, "unknown_assessment_session")
    assert Attachment.objects.count() == 0 and _staging_files() == []


def test_upload_linked_to_own_assessment_session(api, tenant):
    session = AssessmentSession.objects.create(tenant=tenant)
    response = _post(api, b"data", assessmentSessionId=str(session.pk))
    assert response.status_code == 201
    assert response.json()["assessmentSessionId"] == str(session.pk)


def test_anonymous_upload_is_401(anon_api):
    response = _post(anon_api, b"data")
    assert_error(response, 401, "authentication_required")
    assert Attachment.objects.count() == 0 and _staging_files() == []


def test_storage_down_keeps_bytes_pending_with_backoff(api, settings, storage_switch):
    settings.UPLOADS_RETRY_BACKOFF_BASE_SECONDS = 60
    storage_switch.fail("disk full")
    response = _post(api, b"precious bytes")
    assert response.status_code == 201
    body = response.json()
    assert body["status"] == "pending" and body["attempts"] == 1
    assert "disk full" in body["lastError"]
    row = Attachment.objects.get(pk=body["id"])
    assert 55 <= (row.next_retry_at - row.last_attempt_at).total_seconds() <= 65
    staged = _staging_files()
    assert len(staged) == 1 and staged[0].read_bytes() == b"precious bytes"
    assert storage_switch.files() == []
    assert OutboxEvent.objects.count() == 0
    attempt = FinaliseAttempt.objects.get()
    assert attempt.succeeded is False and attempt.source == "upload"


def test_get_shows_status_size_checksum_attempts(api, other_api):
    created = _post(api, b"status please").json()
    response = api.get(f"{URL}{created['id']}")
    assert response.status_code == 200
    body = response.json()
    assert {k: body[k] for k in ("status", "size", "sha256", "attempts")} == {
        "status": "stored",
        "size": 13,
        "sha256": hashlib.sha256(b"status please").hexdigest(),
        "attempts": 1,
    }
    assert_tenant_isolated(other_api, "get", f"{URL}{created['id']}")


def test_get_unknown_upload_is_404(api):
    assert_error(api.get(f"{URL}{uuid.uuid4()}"), 404, "not_found")


def test_publishable_key_links_an_upload_only_with_the_session_token(browser_api, tenant):
    # A session id travels in analytics events and URLs: with the public key alone, anyone
    # could attach files to another visitor's session. The session's token is required.
    from tests.assessments.factories import SESSION_TOKEN, SessionFactory

    session = SessionFactory(tenant=tenant)
    without = _post(browser_api, b"data", assessmentSessionId=str(session.pk))
    assert_error(without, 403, "session_token_required")
    wrong = _post(
        browser_api, b"data", assessmentSessionId=str(session.pk), HTTP_X_SESSION_TOKEN="x"
    )
    assert_error(wrong, 403, "invalid_session_token")
    assert Attachment.objects.count() == 0 and _staging_files() == []
    right = _post(
        browser_api,
        b"data",
        assessmentSessionId=str(session.pk),
        HTTP_X_SESSION_TOKEN=SESSION_TOKEN,
    )
    assert right.status_code == 201, right.content
    assert Attachment.objects.get().assessment_session_id == session.pk
