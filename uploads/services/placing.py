"""Placing staged bytes into STORAGES["attachments"]: the file-system part of finalising.

When the attachments storage is a plain FileSystemStorage on the same file system as the
staging area, the staged file is hard-linked under its storage name and the file and the
directories that changed are fsync'd: no byte is copied or read again. The bytes were fsync'd
when they arrived and hashed while they were written, so the link *is* the verified file. The
staged name stays until the finalising transaction has committed: a crash before that leaves
both names, and the next attempt links again (over its own earlier link).

Any other storage (object storage, a subclass that customises saving, another file system)
gets the verified copy: the staged file is hashed while it is copied, and the stored copy is
read back and hashed; either digest differing from the attachment's fails the attempt.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from pathlib import Path
from typing import IO, Any, cast

from django.conf import settings
from django.core.files import File
from django.core.files.storage import FileSystemStorage, Storage

from uploads import staging
from uploads.models import Attachment


class StagedBytesMissing(Exception):
    """No staged bytes here. Never a permanent failure: they may sit on a host that is down
    or on a shared volume that is unmounted for a moment. Retried with backoff, flagged on the
    row (staged_missing_since) and alerted after UPLOADS_MISSING_ALERT_ATTEMPTS."""


def links_into(storage: Storage, staged: Path) -> bool:
    """True when `storage` is a plain file-system storage on the staged file's device."""
    if not isinstance(storage, FileSystemStorage):
        return False
    if getattr(type(storage), "_save", None) is not getattr(FileSystemStorage, "_save", None):
        # it customises saving (a check, a transformation): it gets the copy, through it
        return False
    location = _existing_ancestor(Path(storage.location))
    return os.stat(location).st_dev == os.stat(staged).st_dev


def place(storage: Storage, attachment: Attachment, staged: Path, name: str) -> str:
    """Put the staged bytes under `name` in `storage`, durably and verified; returns the name
    the storage used."""
    if not staged.exists():
        where = f" (staged on {attachment.staging_host})" if attachment.staging_host else ""
        raise StagedBytesMissing(
            f"staged bytes missing on {settings.ATLAS_HOST_NAME}{where}: {staged.name}"
        )
    if isinstance(storage, FileSystemStorage) and links_into(storage, staged):
        return _link(storage, attachment, staged, name)
    return _verified_copy(storage, attachment, staged, name)


def _existing_ancestor(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _link(storage: FileSystemStorage, attachment: Attachment, staged: Path, name: str) -> str:
    target = Path(storage.path(name))
    _make_dirs(target.parent, storage.directory_permissions_mode)
    size = os.stat(staged).st_size
    if size != attachment.size:
        raise OSError(f"staged size {size} != expected {attachment.size}")
    # link under a temporary name, then rename over the final one: a retry replaces its own
    # earlier link, and the final name never points at anything half-made
    if not (target.exists() and os.path.samefile(staged, target)):  # else: an earlier try's
        temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex}.link")
        os.link(staged, temporary)
        try:
            os.replace(temporary, target)
        finally:
            # rename() between two links of one file does nothing: never leave the temporary
            staging.remove_quietly(temporary)
    if storage.file_permissions_mode is not None:
        os.chmod(target, storage.file_permissions_mode)
    fd = os.open(target, os.O_RDONLY)
    try:
        os.fsync(fd)  # the inode's new link count
    finally:
        os.close(fd)
    # the new entry, and every folder's entry up to the storage root: not only those this call
    # made, since a shard folder another finaliser made a moment ago may not be durable yet
    # (an unchanged folder's fsync costs a few tens of µs)
    root = Path(storage.location).resolve()
    folder = target.parent.resolve()
    while True:
        staging.fsync_dir(folder)
        if folder == root or root not in folder.parents:
            return name
        folder = folder.parent


def _make_dirs(folder: Path, mode: int | None) -> None:
    """Create `folder` and missing parents (their entries are made durable by the caller)."""
    missing = []
    current = folder
    while not current.exists():
        missing.append(current)
        current = current.parent
    for path in reversed(missing):
        with contextlib.suppress(FileExistsError):  # a concurrent finalise made it
            path.mkdir(mode=mode if mode is not None else 0o777)


class _HashingReader:
    """Hashes what the storage reads from the staged file: the copy is the only pass over it."""

    def __init__(self, fh: IO[bytes]):
        self.fh = fh
        self.digest: Any = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        chunk = self.fh.read(size)
        if self.digest is not None:
            self.digest.update(chunk)
        return chunk

    def seek(self, offset: int, whence: int = 0) -> int:
        # a storage that reads the file again starts the digest again; any other jump leaves
        # the check to the read-back
        self.digest = hashlib.sha256() if (offset, whence) == (0, 0) else None
        return self.fh.seek(offset, whence)

    def __getattr__(self, name):
        return getattr(self.fh, name)


def _verified_copy(storage: Storage, attachment: Attachment, staged: Path, name: str) -> str:
    if storage.exists(name):  # a previous attempt stored it but its transaction rolled back
        storage.delete(name)
    with staged.open("rb") as fh:
        reader = _HashingReader(fh)
        saved = storage.save(name, File(cast(IO[bytes], reader), name=attachment.filename))
    try:
        copied = reader.digest.hexdigest() if reader.digest is not None else None
        if attachment.sha256 and copied not in (None, attachment.sha256):
            raise OSError("the staged bytes do not match the SHA-256 they were received with")
        size = storage.size(saved)
        if size != attachment.size:
            raise OSError(f"stored size {size} != expected {attachment.size}")
        read_back = hashlib.sha256()
        with storage.open(saved, "rb") as stored:
            for chunk in stored.chunks(1024 * 1024):
                read_back.update(chunk)
        if attachment.sha256 and read_back.hexdigest() != attachment.sha256:
            raise OSError("stored bytes do not match the SHA-256 (storage corrupted them)")
    except Exception:
        delete_quietly(storage, saved)
        raise
    return saved


def delete_quietly(storage: Storage, name: str) -> None:
    import logging

    try:
        storage.delete(name)
    except Exception:  # the storage is the thing failing; the next attempt deletes again
        logging.getLogger(__name__).warning("could not remove %s from storage", name)
