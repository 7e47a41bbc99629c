"""Quotas: no tenant fills the disk.

A tenant holds the bytes of its attachments (pending, stored, failed) and reserves the
announced Upload-Length of each open tus upload; together they stay within
UPLOADS_TENANT_QUOTA_BYTES, and at most UPLOADS_TENANT_MAX_OPEN tus uploads are open at once.
The check and the insert that reserves the room happen under a per-tenant transaction-level
advisory lock, so two concurrent creations cannot both take the last room.

Publishable keys (the key in every visitor's page) get a tighter per-upload maximum, and a new
upload is refused while the staging disk would keep less than UPLOADS_STAGING_MIN_FREE_BYTES.
"""

from __future__ import annotations

import logging
import shutil
import uuid
from pathlib import Path

from django.conf import settings
from django.db import connection

from core.errors import DomainError, ErrorKind
from uploads import staging
from uploads.selectors import TenantUsage, usage_of, usage_statement

logger = logging.getLogger(__name__)
# First key of the two-key advisory lock ("upld"); the two-key space never overlaps the
# one-key space that UploadLock uses per upload.
QUOTA_LOCK_CLASS = 0x75706C64


def upload_max_bytes(*, publishable: bool) -> int:
    """The largest single upload a key may send."""
    if publishable:
        return min(settings.UPLOADS_MAX_BYTES, settings.UPLOADS_PUBLISHABLE_MAX_BYTES)
    return settings.UPLOADS_MAX_BYTES


def _locked_usage(tenant_id) -> TenantUsage:
    """Serialise quota decisions of one tenant until the transaction ends, and read its usage:
    two statements in one round trip (Django's client-side binding sends them as one simple
    query). The second takes its snapshot once the lock is held, so it sees the rows of every
    transaction that held the lock before."""
    value = uuid.UUID(str(tenant_id)).int & 0xFFFFFFFF
    key = value - 2**32 if value >= 2**31 else value
    usage_sql, params = usage_statement(tenant_id=tenant_id)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT pg_advisory_xact_lock(%s, %s); {usage_sql}", [QUOTA_LOCK_CLASS, key, *params]
        )
        cursor.nextset()
        return usage_of(cursor.fetchone())


def _check(usage: TenantUsage, *, size: int, opens_upload: bool) -> None:
    if opens_upload and usage.open_uploads >= settings.UPLOADS_TENANT_MAX_OPEN:
        raise DomainError(
            "too_many_open_uploads",
            f"At most {settings.UPLOADS_TENANT_MAX_OPEN} uploads may be open at once; "
            "finish or terminate one first.",
            kind=ErrorKind.RATE_LIMITED,
            details={
                "openUploads": usage.open_uploads,
                "maxOpenUploads": settings.UPLOADS_TENANT_MAX_OPEN,
            },
        )
    if usage.used_bytes + size > settings.UPLOADS_TENANT_QUOTA_BYTES:
        raise DomainError(
            "quota_exceeded",
            "This upload does not fit in the tenant's storage quota.",
            kind=ErrorKind.TOO_LARGE,
            details={
                "quotaBytes": settings.UPLOADS_TENANT_QUOTA_BYTES,
                "usedBytes": usage.used_bytes,
                "requestedBytes": size,
            },
        )


def quota_reserve(*, tenant_id, size: int, opens_upload: bool) -> None:
    """Call inside the transaction that inserts the attachment: the tenant stays locked until
    it commits, so the row that takes the room is visible to the next check."""
    if not connection.in_atomic_block:
        raise RuntimeError("quota_reserve must run inside the inserting transaction")
    _check(_locked_usage(tenant_id), size=size, opens_upload=opens_upload)


def _existing_ancestor(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def staging_space_check(*, size: int) -> None:
    """Refuse a new upload when the staging disk would keep less than the margin."""
    margin = settings.UPLOADS_STAGING_MIN_FREE_BYTES
    free = shutil.disk_usage(_existing_ancestor(staging.staging_root())).free
    if free - size < margin:
        # the numbers stay in the log: the disk's state is not the caller's business
        logger.warning(
            "staging disk short: %s bytes free, %s requested, %s kept free", free, size, margin
        )
        raise DomainError(
            "insufficient_storage",
            "The server cannot take this upload right now; try again later.",
            kind=ErrorKind.INSUFFICIENT_STORAGE,
            details={"requestedBytes": size},
        )
