"""Finalising after the answer.

The last PATCH answers 204 once its bytes are staged, fsync'd and acknowledged (the row is
pending with its SHA-256 and the inline claim, committed). Placing the file into storage and
the short transaction that marks it stored (with its upload.stored event) then run on one
finisher thread per process, while the client goes on with its next request. A process that
dies first leaves a claimed pending row, which the retry runs take once the claim's lease
(UPLOADS_RETRY_LEASE_SECONDS) has run out: nothing acknowledged depends on this thread.

`UPLOADS_FINALISE_IN_BACKGROUND=false` finalises inside the request instead (the unit tests
run that way, so a request's effects are all there when it returns).
"""

from __future__ import annotations

import contextvars
import logging
import queue
import threading

from django.conf import settings
from django.db import close_old_connections, connections

from tenants import rls
from uploads.models import Attachment, RetrySource
from uploads.services.finalising import attachment_finalise

logger = logging.getLogger("uploads")

_waiting: queue.SimpleQueue[Attachment | threading.Event] = queue.SimpleQueue()
_started = threading.Lock()
_finisher: threading.Thread | None = None


def finalise_after_answer(attachment: Attachment) -> bool:
    """Hand a claimed, pending upload to this process's finisher. False when finalising in
    the background is off (the caller finalises now)."""
    if not settings.UPLOADS_FINALISE_IN_BACKGROUND:
        return False
    _finisher_start()
    _waiting.put(attachment)
    return True


def _finisher_start() -> None:
    global _finisher
    with _started:
        if _finisher is None or not _finisher.is_alive():
            # a fresh context: the request's tenant scope must not leak into the thread
            _finisher = threading.Thread(
                target=contextvars.Context().run,
                args=(_finish_forever,),
                name="uploads-finisher",
                daemon=True,
            )
            _finisher.start()


def finisher_drain(timeout: float = 30.0) -> bool:
    """Wait until the finisher has done everything handed to it so far, then let it close its
    database connection (tests; a process about to stop). True when it got there in time."""
    if _finisher is None or not _finisher.is_alive():
        return True
    done = threading.Event()
    _waiting.put(done)
    return done.wait(timeout)


def _finish_forever() -> None:
    while True:
        attachment = _waiting.get()
        if isinstance(attachment, threading.Event):
            connections.close_all()
            attachment.set()
            continue
        try:
            with rls.tenant_scope(attachment.tenant_id):
                attachment_finalise(
                    attachment_id=attachment.pk, source=RetrySource.UPLOAD, claimed=attachment
                )
        except Exception:  # the row stays pending and claimed: a retry run finishes it
            logger.exception("finalising upload %s after the answer failed", attachment.pk)
        finally:
            close_old_connections()
