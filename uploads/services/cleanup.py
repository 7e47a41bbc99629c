"""Staging clean-up: files in the staging area that no row needs any more.

- `incoming/*.part`: a multipart body being received. No row ever refers to one; once it has
  not been written to for the grace period, its request is gone (a crash, a killed worker).
- `<tenant>/<attachment id>`: the staged bytes of an attachment. They are needed while the
  attachment is receiving, pending or failed (a staff retry reads them). Without such a row —
  a transaction that rolled back after the file was written, a stored attachment whose
  after-commit removal did not happen — they are removed after the grace period.

The grace period (UPLOADS_STAGING_ORPHAN_GRACE_MINUTES) protects files whose row is about to
be committed: a file is judged by its last write, which is always fresh while in use.
Expired tus uploads are removed by `tus.uploads_expired_cleanup` (row and bytes together).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from django.conf import settings

from uploads import staging
from uploads.models import Attachment

NEEDS_STAGED_BYTES = [
    Attachment.Status.RECEIVING,
    Attachment.Status.PENDING,
    Attachment.Status.FAILED,
]
BATCH = 500


def _older_than(path: Path, cutoff: float) -> bool:
    try:
        return path.stat().st_mtime < cutoff
    except FileNotFoundError:
        return False


def _staged_candidates(root: Path, cutoff: float) -> Iterator[tuple[uuid.UUID, Path]]:
    """Old files named like an attachment, under a folder named like a tenant."""
    for tenant_dir in root.iterdir():
        if not tenant_dir.is_dir() or tenant_dir.name == "incoming":
            continue
        try:
            uuid.UUID(tenant_dir.name)
        except ValueError:
            continue
        for path in tenant_dir.iterdir():
            try:
                attachment_id = uuid.UUID(path.name)
            except ValueError:
                continue  # not a file this app writes: left alone
            if path.is_file() and _older_than(path, cutoff):
                yield attachment_id, path


def _remove_unneeded(batch: list[tuple[uuid.UUID, Path]]) -> int:
    # (attachment, tenant) pairs whose bytes are still needed; a file counts only under its
    # own tenant's folder
    needed = {
        (str(pk), str(tenant_id))
        for pk, tenant_id in Attachment.objects.filter(
            pk__in=[attachment_id for attachment_id, _ in batch], status__in=NEEDS_STAGED_BYTES
        ).values_list("pk", "tenant_id")
    }
    removed = 0
    for attachment_id, path in batch:
        if (str(attachment_id), path.parent.name) not in needed:
            staging.remove_quietly(path)
            removed += 1
    return removed


def staging_orphans_cleanup(*, now: float | None = None) -> int:
    """Remove orphaned staging files; returns how many."""
    root = staging.staging_root()
    if not root.exists():
        return 0
    cutoff = (now or time.time()) - settings.UPLOADS_STAGING_ORPHAN_GRACE_MINUTES * 60
    removed = 0
    incoming = root / "incoming"
    if incoming.exists():
        for part in incoming.glob("*.part"):
            if _older_than(part, cutoff):
                staging.remove_quietly(part)
                removed += 1
    batch: list[tuple[uuid.UUID, Path]] = []
    for candidate in _staged_candidates(root, cutoff):
        batch.append(candidate)
        if len(batch) >= BATCH:
            removed += _remove_unneeded(batch)
            batch = []
    if batch:
        removed += _remove_unneeded(batch)
    return removed
