"""Set-up helpers for uploads tests: attachments whose bytes really sit in staging."""

from __future__ import annotations

import hashlib
import uuid

from uploads import staging
from uploads.models import Attachment


def staged_attachment(tenant, data: bytes = b"hello world", **fields) -> Attachment:
    """A `pending` attachment with its bytes in the staging area (as after an upload whose
    finalisation failed)."""
    from django.utils import timezone

    attachment_id = fields.pop("id", None) or uuid.uuid4()
    values = {
        "channel": Attachment.Channel.MULTIPART,
        "filename": "notes.txt",
        "content_type": "text/plain",
        "size": len(data),
        "upload_offset": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "status": Attachment.Status.PENDING,
        "next_retry_at": timezone.now(),
    }
    values.update(fields)
    attachment = Attachment.objects.create(id=attachment_id, tenant=tenant, **values)
    path = staging.staging_path(tenant_id=tenant.pk, attachment_id=attachment.pk)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return attachment
