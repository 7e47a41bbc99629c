"""One pass over the bytes: the SHA-256 is computed while PATCHes write (and is still the
file's real one when PATCHes land on other processes or fail half-way), finalising hard-links
the staged file into a file-system storage on the same disk, and a PATCH costs three
statements."""

from __future__ import annotations

import base64
import hashlib
import os
import uuid
from pathlib import Path

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from outbox.models import OutboxEvent
from tests.uploads.factories import staged_attachment
from tests.uploads.test_tus_protocol import _path, create, patch
from uploads import running_hash, staging
from uploads.models import Attachment, FinaliseAttempt
from uploads.services.finalising import attachment_finalise, inline_claim

pytestmark = pytest.mark.django_db


def _stored_file(location: Path) -> Path:
    (found,) = [p for p in location.rglob("*") if p.is_file()]
    return found


def _upload(api, parts: list[bytes], between=None) -> Attachment:
    response = create(api, sum(map(len, parts)))
    url = _path(response["Location"])
    offset = 0
    for index, part in enumerate(parts):
        if between and index:
            between(index)
        answer = patch(api, url, part, offset)
        assert answer.status_code == 204, answer.content
        offset += len(part)
    return Attachment.objects.get(pk=url.rsplit("/", 1)[1])


def test_the_last_patch_links_the_staged_file_into_storage(api, tenant, plain_storage):
    data = os.urandom(300_000)
    inodes = []

    def remember_inode(index):
        attachment = Attachment.objects.get()
        inodes.append(staging.staging_path(tenant_id=tenant.pk, attachment_id=attachment.pk)
                      .stat().st_ino)  # fmt: skip

    attachment = _upload(api, [data[:100_000], data[100_000:]], between=remember_inode)
    assert attachment.status == "stored"
    assert attachment.sha256 == hashlib.sha256(data).hexdigest()
    stored = _stored_file(plain_storage)
    assert stored.read_bytes() == data
    assert stored.stat().st_ino == inodes[0]  # the very file the PATCHes wrote: no copy
    assert stored.stat().st_nlink == 1  # the staged name is gone once stored
    assert attachment.storage_name == str(stored.relative_to(plain_storage))
    assert OutboxEvent.objects.filter(idempotency_key=f"upload.stored:{attachment.pk}").count() == 1
    assert list(FinaliseAttempt.objects.values_list("succeeded", flat=True)) == [True]


def test_stored_files_share_a_shard_folder_instead_of_one_folder_each(tenant, plain_storage):
    # a folder per attachment cost a mkdir and a folder fsync per upload; ids ending alike
    # land in one shard folder of the tenant
    ids = [uuid.UUID(f"{n:030x}ab") for n in range(1, 4)]
    for attachment_id in ids:
        staged_attachment(tenant, b"shard", id=attachment_id, filename="a b.txt")
        assert attachment_finalise(attachment_id=attachment_id, source="manual") is True
    names = sorted(Attachment.objects.values_list("storage_name", flat=True))
    assert names == [f"{tenant.pk}/ab/{attachment_id}_a_b.txt" for attachment_id in ids]
    folders = {p for p in plain_storage.rglob("*") if p.is_dir()}
    assert folders == {plain_storage / str(tenant.pk), plain_storage / str(tenant.pk) / "ab"}
    assert all((plain_storage / name).read_bytes() == b"shard" for name in names)


@pytest.mark.parametrize(
    "name",
    ["文" * 61 + ".txt", "文" * 100 + ".txt", "é" * 99 + ".pdf"],
    ids=["cjk-65-chars", "cjk-104-chars", "accents-103-chars"],
)
def test_a_long_name_in_any_script_is_stored(tenant, plain_storage, name):
    # names are cut by bytes, not characters: 3-byte characters made the link's temporary
    # name longer than a file system allows, and every finalising attempt failed
    attachment = staged_attachment(tenant, b"x", filename=name)
    assert attachment_finalise(attachment_id=attachment.pk, source="manual") is True
    attachment.refresh_from_db()
    stored_name = attachment.storage_name.rsplit("/", 1)[1]
    assert len(stored_name.encode()) <= 37 + 150 and stored_name.endswith(name[-4:])
    assert attachment.filename == name  # the original stays in the row
    assert (plain_storage / attachment.storage_name).read_bytes() == b"x"


def test_every_folder_up_to_the_storage_root_is_made_durable_each_time(
    tenant, plain_storage, monkeypatch
):
    # the shard folder may have been made a moment ago by another finaliser that has not
    # fsync'd its parent yet: this file's entry must not depend on that
    first, second = (uuid.UUID(f"{n:030x}cd") for n in (1, 2))
    staged_attachment(tenant, b"one", id=first)
    assert attachment_finalise(attachment_id=first, source="manual") is True
    synced: list[Path] = []
    original = staging.fsync_dir
    monkeypatch.setattr(staging, "fsync_dir", lambda path: (synced.append(path), original(path)))
    staged_attachment(tenant, b"two", id=second)  # its shard folder exists already
    assert attachment_finalise(attachment_id=second, source="manual") is True
    root = plain_storage.resolve()
    assert synced == [root / str(tenant.pk) / "cd", root / str(tenant.pk), root]


def test_patches_landing_on_another_process_still_give_the_real_sha256(api, plain_storage):
    data = os.urandom(250_000)
    # another worker or host holds no running hash: it hashes the staged file first
    attachment = _upload(
        api, [data[:80_000], data[80_000:160_000], data[160_000:]],
        between=lambda index: running_hash._states.clear(),
    )  # fmt: skip
    assert attachment.sha256 == hashlib.sha256(data).hexdigest()
    assert _stored_file(plain_storage).read_bytes() == data
    assert running_hash.held() == 0  # a finished upload leaves no state behind


def test_a_running_hash_at_another_offset_is_not_trusted(api, tenant, plain_storage):
    data = os.urandom(30_000)
    response = create(api, len(data))
    url = _path(response["Location"])
    assert patch(api, url, data[:10_000], 0).status_code == 204
    attachment = Attachment.objects.get()
    # a stale state (say, of an upload re-created with this id) at a different offset
    running_hash.keep(upload_id=attachment.pk, created_at=attachment.created_at, offset=5,
                      digest=hashlib.sha256(b"stale"))  # fmt: skip
    assert patch(api, url, data[10_000:], 10_000).status_code == 204
    attachment.refresh_from_db()
    assert attachment.sha256 == hashlib.sha256(data).hexdigest()


def test_a_discarded_chunk_does_not_enter_the_sha256(api, plain_storage):
    data = os.urandom(20_000)
    response = create(api, len(data))
    url = _path(response["Location"])
    assert patch(api, url, data[:10_000], 0).status_code == 204
    wrong = "sha1 " + base64.b64encode(hashlib.sha1(b"other").digest()).decode()
    refused = patch(api, url, data[10_000:], 10_000, HTTP_UPLOAD_CHECKSUM=wrong)
    assert refused.status_code == 460
    assert patch(api, url, data[10_000:], 10_000).status_code == 204
    attachment = Attachment.objects.get()
    assert attachment.status == "stored"
    assert attachment.sha256 == hashlib.sha256(data).hexdigest()


def test_a_patch_is_three_statements_and_the_last_one_adds_one_short_transaction(
    api, plain_storage
):
    # Before: lock, read, update, re-read, unlock (5); the last PATCH re-hashed the file and
    # held the row lock while copying and reading it back (13 statements).
    response = create(api, 20)
    url = _path(response["Location"])
    with CaptureQueriesContext(connection) as middle:
        assert patch(api, url, b"0123456789", 0).status_code == 204
    with CaptureQueriesContext(connection) as last:
        assert patch(api, url, b"abcdefghij", 10).status_code == 204
    sql = [q["sql"] for q in middle.captured_queries]
    assert len(sql) == 3, sql
    assert "pg_try_advisory_lock" in sql[0] and sql[1].startswith("UPDATE")
    assert "pg_advisory_unlock" in sql[2]
    sql = [q["sql"] for q in last.captured_queries if "SAVEPOINT" not in q["sql"]]
    # lock + read, pending, unlock; then stored together with its attempt's row, the event
    assert len(sql) == 5, sql
    assert "uploads_finaliseattempt" in sql[3] and "UPDATE uploads_attachment" in sql[3]
    assert not any("FOR UPDATE" in statement for statement in sql)


def test_a_patch_starts_the_disk_writes_of_its_bytes_before_their_fsync(
    api, plain_storage, monkeypatch
):
    # Before: all the bytes of a PATCH were left to the fsync (1 MB: 0.63 ms waiting in it);
    # each piece's writeback now starts as soon as it is written (the fsync still follows).
    started: list[tuple[int, int]] = []
    monkeypatch.setattr(
        staging, "_fadvise", lambda fd, offset, length, advice: started.append((offset, length))
    )
    url = _path(create(api, 30)["Location"])
    assert patch(api, url, b"a" * 20, 0).status_code == 204
    assert patch(api, url, b"b" * 10, 20).status_code == 204
    assert started == [(0, 20), (20, 10)]
    assert Attachment.objects.get().status == "stored"


def test_a_finaliser_whose_claim_was_taken_over_changes_nothing(tenant, plain_storage):
    from django.utils import timezone

    data = b"claimed twice"
    late = staged_attachment(tenant, data, **inline_claim(timezone.now()))
    late_token = late.claimed_by
    # the lease ran out, a retry run took it over and stored it
    Attachment.objects.filter(pk=late.pk).update(claimed_by=None, claimed_until=None)
    assert attachment_finalise(attachment_id=late.pk, source="manual") is True
    stored = _stored_file(plain_storage)
    # the first holder wakes up and carries on with its old claim
    late.claimed_by = late_token
    assert attachment_finalise(attachment_id=late.pk, source="upload", claimed=late) in (
        None,
        False,
    )
    assert stored.read_bytes() == data
    assert Attachment.objects.get(pk=late.pk).status == "stored"
    assert OutboxEvent.objects.filter(idempotency_key=f"upload.stored:{late.pk}").count() == 1
    assert list(FinaliseAttempt.objects.values_list("succeeded", flat=True)) == [True]


def test_the_verified_copy_refuses_staged_bytes_that_changed(tenant, storage_switch):
    # a storage that customises saving gets the copy; the staged file is hashed on the way
    attachment = staged_attachment(tenant, b"the bytes as received")
    staged = staging.staging_path(tenant_id=tenant.pk, attachment_id=attachment.pk)
    staged.write_bytes(b"the bytes as rotted!!")  # same size, other bytes
    assert attachment_finalise(attachment_id=attachment.pk, source="manual") is False
    attachment.refresh_from_db()
    assert attachment.status == "pending" and "do not match" in attachment.last_error
    assert storage_switch.files() == []


def test_a_re_created_upload_id_never_reuses_the_old_running_hash(api, plain_storage):
    upload_id = str(uuid.uuid4())
    old = create(api, 20, uploadId=upload_id)
    url = _path(old["Location"])
    assert patch(api, url, b"A" * 10, 0).status_code == 204
    assert api.delete(url, HTTP_TUS_RESUMABLE="1.0.0").status_code == 204
    new = create(api, 20, uploadId=upload_id)
    assert patch(api, _path(new["Location"]), b"B" * 10, 0).status_code == 204
    assert patch(api, _path(new["Location"]), b"C" * 10, 10).status_code == 204
    assert Attachment.objects.get().sha256 == hashlib.sha256(b"B" * 10 + b"C" * 10).hexdigest()


def test_patches_on_other_processes_cost_one_read_of_the_file_not_one_each(
    api, plain_storage, monkeypatch
):
    """A client that sends every PATCH to another worker (no running hash there) must not make
    each PATCH read the staged file from the start again (5 PATCHes of a 100 MB upload were 5
    reads of up to 100 MB): the upload is hashed once, when it completes."""
    reads = []
    real = running_hash.file_digest

    def counted(path, size):
        reads.append(size)
        return real(path, size)

    monkeypatch.setattr(running_hash, "file_digest", counted)
    data = os.urandom(50_000)
    url = _path(create(api, len(data))["Location"])
    for offset in range(0, len(data), 10_000):
        running_hash._states.clear()  # this PATCH lands on a process that has no state
        assert patch(api, url, data[offset : offset + 10_000], offset).status_code == 204
    attachment = Attachment.objects.get()
    assert attachment.status == "stored"
    assert attachment.sha256 == hashlib.sha256(data).hexdigest()
    assert reads == [len(data)]


def test_large_pieces_are_hashed_on_a_hashing_thread_in_order():
    # hashlib lets go of the GIL on large pieces: hashed on their own thread, they overlap
    # with reading the next piece from the socket and writing it
    import threading

    class Recording:
        def __init__(self):
            self.inner, self.seen = hashlib.sha256(), []

        def update(self, piece):
            self.seen.append((len(piece), threading.current_thread().name))
            self.inner.update(piece)

    pieces = [os.urandom(300_000), b"tiny", os.urandom(100_000), os.urandom(70_000)]
    recording, plain = Recording(), hashlib.sha256()
    hashing = running_hash.Overlapped([recording, plain])
    for piece in pieces:
        hashing.update(piece)
    hashing.wait()
    whole = hashlib.sha256(b"".join(pieces)).hexdigest()
    assert recording.inner.hexdigest() == plain.hexdigest() == whole
    assert [size for size, _ in recording.seen] == [len(p) for p in pieces]  # in order
    threads = [name for _, name in recording.seen]
    assert threads[1] == threading.current_thread().name  # a small piece: no thread hop
    assert all(threads[i].startswith("upload-hash") for i in (0, 2, 3))


def test_a_file_system_that_refuses_the_writeback_hint_still_takes_the_bytes(monkeypatch, tmp_path):
    def refuse(*args):
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr(staging, "_fadvise", refuse)
    with (tmp_path / "f").open("wb") as fh:
        fh.write(b"bytes")
        staging.start_writeback(fh, 0, 5)  # a hint: no error reaches the request
    assert (tmp_path / "f").read_bytes() == b"bytes"
