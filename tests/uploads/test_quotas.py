"""No tenant fills the disk: per-tenant quota (stored + reserved by open tus uploads), a cap on
open tus uploads, a tighter per-upload maximum for publishable keys, and a refusal when the
staging disk is short of space. The attacks are the ones seen against the old code, scaled
down by settings."""

from __future__ import annotations

import base64
import threading
import uuid

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.db.models import Sum
from django.test import TestCase

from core.errors import DomainError
from tests.factories import TenantFactory
from tests.tenancy import assert_error, in_this_scope
from uploads import staging
from uploads.models import Attachment
from uploads.services.tus import tus_upload_create

pytestmark = pytest.mark.django_db
URL = "/api/uploads/"
TUS = "/api/uploads/tus/"
V = {"HTTP_TUS_RESUMABLE": "1.0.0"}


@pytest.fixture(autouse=True)
def _limits(settings):
    settings.UPLOADS_TENANT_QUOTA_BYTES = 1_000_000
    settings.UPLOADS_TENANT_MAX_OPEN = 100
    settings.UPLOADS_PUBLISHABLE_MAX_BYTES = 5 * 1024 * 1024
    settings.UPLOADS_STAGING_MIN_FREE_BYTES = 0


def _post(client, data: bytes, **fields):
    payload = {"file": SimpleUploadedFile("f.bin", data, "application/octet-stream"), **fields}
    with TestCase.captureOnCommitCallbacks(execute=True):
        return client.post(URL, payload, format="multipart")


def _create(client, length: int, body: bytes | None = None, **headers):
    headers = {**V, "HTTP_UPLOAD_LENGTH": str(length), **headers}
    if body is None:
        return client.post(TUS, **headers)
    with TestCase.captureOnCommitCallbacks(execute=True):
        return client.generic(
            "POST", TUS, data=body, content_type="application/offset+octet-stream", **headers
        )


def _patch(client, location: str, body: bytes, offset: int):
    with TestCase.captureOnCommitCallbacks(execute=True):
        return client.generic(
            "PATCH",
            "/" + location.split("/", 3)[3],
            data=body,
            content_type="application/offset+octet-stream",
            **{**V, "HTTP_UPLOAD_OFFSET": str(offset)},
        )


def _held_bytes(tenant) -> int:
    return Attachment.objects.filter(tenant=tenant).aggregate(s=Sum("size"))["s"] or 0


def _incoming_parts() -> list:
    folder = staging.staging_root() / "incoming"
    return list(folder.glob("*.part")) if folder.exists() else []


# --- the attacks ---------------------------------------------------------------------------


def test_attack_many_small_uploads_with_the_public_key_stop_at_the_quota(browser_api, tenant):
    """Old code: 20 × 5 MB with the pk stored 100 MB. Scaled: 20 × 100 kB against 1 MB."""
    answers = [_post(browser_api, bytes([i]) * 100_000) for i in range(20)]

    assert [r.status_code for r in answers] == [201] * 10 + [413] * 10
    error = assert_error(answers[-1], 413, "quota_exceeded")
    assert error["details"]["quotaBytes"] == 1_000_000
    assert error["details"]["usedBytes"] == 1_000_000
    assert Attachment.objects.filter(tenant=tenant).count() == 10
    assert _held_bytes(tenant) == 1_000_000
    assert _incoming_parts() == []  # refused bodies leave nothing in staging


def test_attack_many_tus_announcements_stop_at_the_open_upload_cap(api, tenant, settings):
    """Old code: 200 tus creations announcing 100 MB each were all accepted (19.5 GiB
    promised). Scaled: 20 creations against a cap of 5 open uploads."""
    settings.UPLOADS_TENANT_QUOTA_BYTES = 10**12
    settings.UPLOADS_TENANT_MAX_OPEN = 5
    answers = [_create(api, 1000) for _ in range(20)]

    assert [r.status_code for r in answers] == [201] * 5 + [429] * 15
    error = assert_error(answers[-1], 429, "too_many_open_uploads")
    assert error["details"] == {"openUploads": 5, "maxOpenUploads": 5}
    assert answers[-1]["Tus-Resumable"] == "1.0.0"
    assert Attachment.objects.filter(tenant=tenant, status="receiving").count() == 5

    # finishing one frees its place
    assert _patch(api, answers[0]["Location"], b"x" * 1000, 0).status_code == 204
    assert _create(api, 1000).status_code == 201
    assert _create(api, 1000).status_code == 429


def test_attack_tus_announcements_reserve_their_length(api, tenant):
    """Old code: announcing far more than the quota was accepted. The announced
    Upload-Length is reserved at creation."""
    first = _create(api, 600_000)
    assert first.status_code == 201
    second = _create(api, 600_000)
    error = assert_error(second, 413, "quota_exceeded")
    assert error["details"] == {
        "quotaBytes": 1_000_000,
        "usedBytes": 600_000,
        "requestedBytes": 600_000,
    }
    assert Attachment.objects.filter(tenant=tenant).count() == 1
    assert second["Tus-Resumable"] == "1.0.0"
    # the reservation goes when the upload is terminated
    url = "/" + first["Location"].split("/", 3)[3]
    assert api.delete(url, **V).status_code == 204
    assert _create(api, 600_000).status_code == 201


def test_creation_with_upload_is_refused_before_any_byte_is_staged(api, tenant):
    assert _create(api, 900_000).status_code == 201
    refused = _create(api, 200_000, body=b"y" * 1000)
    assert_error(refused, 413, "quota_exceeded")
    assert Attachment.objects.filter(tenant=tenant).count() == 1
    files = [p for p in (staging.staging_root() / str(tenant.pk)).iterdir()]
    assert len(files) == 1  # only the first upload's (empty) staged file


def test_stored_pending_and_failed_bytes_all_count(api, tenant):
    from tests.uploads.factories import staged_attachment

    staged_attachment(tenant, b"p" * 300_000)  # pending
    staged_attachment(tenant, b"f" * 300_000, status="failed")
    assert _post(api, b"s" * 300_000).status_code == 201  # stored
    assert_error(_post(api, b"t" * 100_001), 413, "quota_exceeded")
    assert_error(_create(api, 100_001), 413, "quota_exceeded")
    assert _post(api, b"u" * 100_000).status_code == 201  # exactly up to the quota


def test_one_tenants_quota_does_not_touch_another(api, other_api, tenant, other_tenant):
    assert _create(api, 1_000_000).status_code == 201
    assert_error(_create(api, 1), 413, "quota_exceeded")
    assert _create(other_api, 1_000_000).status_code == 201
    assert _post(other_api, b"z" * 10).status_code == 413  # globex is full now too
    assert _held_bytes(other_tenant) == 1_000_000


def test_expired_uploads_neither_reserve_nor_count_as_open(api, tenant, settings):
    from datetime import timedelta

    import time_machine
    from django.utils import timezone

    settings.UPLOADS_TENANT_MAX_OPEN = 1
    assert _create(api, 900_000).status_code == 201
    assert_error(_create(api, 10), 429, "too_many_open_uploads")
    with time_machine.travel(timezone.now() + timedelta(hours=25)):
        assert _create(api, 900_000).status_code == 201


def test_the_same_upload_id_resent_is_not_counted_twice(api, tenant):
    meta = "uploadId " + base64.b64encode(str(uuid.uuid4()).encode()).decode()
    first = _create(api, 700_000, HTTP_UPLOAD_METADATA=meta)
    again = _create(api, 700_000, HTTP_UPLOAD_METADATA=meta)
    assert (first.status_code, again.status_code) == (201, 201)
    assert first["Location"] == again["Location"]
    data = b"r" * 200_000
    upload_id = str(uuid.uuid4())
    assert _post(api, data, uploadId=upload_id).status_code == 201
    assert _post(api, data, uploadId=upload_id).status_code == 200  # idempotent replay


# --- publishable keys: a tighter per-upload maximum ---------------------------------------


def test_publishable_key_has_a_tighter_per_upload_maximum(browser_api, api, tenant, settings):
    settings.UPLOADS_PUBLISHABLE_MAX_BYTES = 50_000
    error = assert_error(_post(browser_api, b"a" * 50_001), 413, "file_too_large")
    assert error["details"]["maxBytes"] == 50_000
    error = assert_error(_create(browser_api, 50_001), 413, "file_too_large")
    assert error["details"]["maxBytes"] == 50_000
    assert Attachment.objects.count() == 0
    assert _incoming_parts() == []
    # exactly the maximum is fine; the secret key keeps UPLOADS_MAX_BYTES
    assert _post(browser_api, b"a" * 50_000).status_code == 201
    assert _create(browser_api, 50_000).status_code == 201
    assert _post(api, b"b" * 50_001).status_code == 201
    assert _create(api, 50_001).status_code == 201


# --- the staging disk ----------------------------------------------------------------------


def test_creation_refuses_when_the_staging_disk_is_short(api, browser_api, tenant, settings):
    settings.UPLOADS_STAGING_MIN_FREE_BYTES = 10**18  # more than any disk has
    for response in (_create(api, 10), _post(api, b"abc"), _create(browser_api, 10, b"x" * 10)):
        error = assert_error(response, 507, "insufficient_storage")
        assert set(error["details"]) == {"requestedBytes"}  # the disk's numbers stay in the log
    assert Attachment.objects.count() == 0
    assert _incoming_parts() == []
    settings.UPLOADS_STAGING_MIN_FREE_BYTES = 0
    assert _create(api, 10).status_code == 201


# --- concurrency: the check and the reservation are one step ------------------------------


def _race(n: int, attempt) -> list:
    """Run `attempt()` in n real threads released at once; each has its own connection."""
    barrier = threading.Barrier(n)
    results: list = []
    lock = threading.Lock()

    def run():
        try:
            barrier.wait()
            outcome = attempt()
        except DomainError as exc:
            outcome = exc.code
        except Exception as exc:  # pragma: no cover - shows up in the assertion
            outcome = repr(exc)
        finally:
            connection.close()
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=in_this_scope(run)) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results


@pytest.mark.django_db(transaction=True)
def test_concurrent_creations_cannot_both_take_the_last_room(settings):
    tenant = TenantFactory(name="Racer")

    def create():
        tus_upload_create(
            tenant_id=tenant.pk,
            upload_id=uuid.uuid4(),
            length=600_000,
            filename="race.bin",
            content_type="application/octet-stream",
        )
        return "created"

    results = _race(8, create)
    assert sorted(results) == ["created"] + ["quota_exceeded"] * 7
    assert Attachment.objects.filter(tenant=tenant).count() == 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_creations_cannot_pass_the_open_cap(settings):
    settings.UPLOADS_TENANT_QUOTA_BYTES = 10**12
    settings.UPLOADS_TENANT_MAX_OPEN = 3
    tenant = TenantFactory(name="Opener")

    def create():
        tus_upload_create(
            tenant_id=tenant.pk,
            upload_id=uuid.uuid4(),
            length=10,
            filename="race.bin",
            content_type="application/octet-stream",
        )
        return "created"

    results = _race(10, create)
    assert sorted(results) == ["created"] * 3 + ["too_many_open_uploads"] * 7
    assert Attachment.objects.filter(tenant=tenant, status="receiving").count() == 3


@pytest.mark.django_db(transaction=True)
def test_concurrent_multipart_uploads_cannot_both_take_the_last_room(settings):
    import hashlib

    from uploads.services.receiving import attachment_receive

    tenant = TenantFactory(name="Sender")
    data = b"m" * 600_000

    def receive():
        path = staging.incoming_path()
        path.write_bytes(data)
        staged = staging.StagedFile(
            path=path,
            name="race.bin",
            content_type="application/octet-stream",
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
        )
        attachment_receive(tenant_id=tenant.pk, upload_id=uuid.uuid4(), staged=staged)
        return "created"

    results = _race(6, receive)
    assert sorted(results) == ["created"] + ["quota_exceeded"] * 5
    assert Attachment.objects.filter(tenant=tenant).count() == 1
    assert _incoming_parts() == []


# --- operators see the quota use per tenant ------------------------------------------------


@pytest.fixture
def quota_use(tenant, other_tenant):
    """Acme: 300 kB held, one open tus upload reserving 200 kB, one expired (reserves
    nothing). Globex holds nothing and is not listed."""
    from datetime import timedelta

    from django.utils import timezone

    from tests.uploads.factories import staged_attachment

    staged_attachment(tenant, b"h" * 300_000)
    for expires in (timedelta(hours=1), timedelta(hours=-1)):
        staged_attachment(
            tenant, b"", channel="tus", status="receiving", size=200_000, upload_offset=0,
            sha256="", expires_at=timezone.now() + expires,
        )  # fmt: skip


def test_health_page_shows_quota_use_per_tenant(admin_client, tenant, other_tenant, quota_use):
    from django.urls import reverse

    html = admin_client.get(reverse("admin:uploads_retrylog_health")).content.decode()
    flat = " ".join(html.split())
    assert 'id="quota-usage"' in html
    assert f'data-tenant="{tenant.pk}"' in html
    assert f'data-tenant="{other_tenant.pk}"' not in html
    row = flat.split(f'data-tenant="{tenant.pk}"')[1].split("</tr>")[0]
    assert 'data-bytes="300000"' in row  # stored
    assert 'data-bytes="200000"' in row  # reserved by the open upload only
    assert 'data-bytes="500000"' in row  # used
    assert 'data-bytes="1000000"' in row  # quota
    assert "<td>50.0 %</td> <td>1</td><td>100</td>" in row


def test_uploads_health_command_lists_quota_use(tenant, quota_use, capsys):
    import json

    from django.core.management import call_command

    call_command("uploads_health")
    out = capsys.readouterr().out
    line = next(row for row in out.splitlines() if row.startswith("Acme"))
    assert line.split() == ["Acme", "300000", "200000", "1000000", "50.00", "1", "100"]
    call_command("uploads_health", "--json")
    (row,) = json.loads(capsys.readouterr().out)["quotas"]
    assert row == {
        "tenant_id": str(tenant.pk),
        "tenant": "Acme",
        "stored_bytes": 300_000,
        "reserved_bytes": 200_000,
        "used_bytes": 500_000,
        "open_uploads": 1,
        "quota_bytes": 1_000_000,
        "max_open_uploads": 100,
        "used_percent": 50.0,
    }


def test_the_quota_check_and_the_operators_report_count_usage_alike(tenant, quota_use):
    # the check runs a fixed statement (uploads.selectors._USAGE_SQL), the report the ORM's
    # usage_aggregates: one rule written twice, so they are held to the same answer here
    from uploads.selectors import tenant_quota_usage, usage_of, usage_statement

    with connection.cursor() as cursor:
        cursor.execute(*usage_statement(tenant_id=tenant.pk))
        check = usage_of(cursor.fetchone())
    (report,) = [row for row in tenant_quota_usage() if row["tenant_id"] == str(tenant.pk)]
    assert (check.stored_bytes, check.reserved_bytes, check.open_uploads) == (
        report["stored_bytes"], report["reserved_bytes"], report["open_uploads"],
    ) == (300_000, 200_000, 1)  # fmt: skip
