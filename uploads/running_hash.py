"""The SHA-256 of a tus upload, computed while its bytes are written: one pass over the bytes.

hashlib's state cannot be pickled, so it cannot live in the row or in a shared cache. It lives
in this process's memory, keyed by the upload (its id and creation time: a terminated upload
re-created with the same id is another key) and remembering the offset it covers. A PATCH
that finds no state here, or one at another offset — it landed on another worker or host, the
process restarted, an earlier PATCH failed half-way — goes on without one, and the upload is
hashed from its staged file, once, when it completes. So correctness never depends on this
cache, only speed does: the digest is always the one of the staged file's bytes.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

# Enough for every upload a worker has open at once; the oldest is forgotten first (it would
# then be hashed from its staged file when it completes, never be wrong).
MAX_STATES = 512
READ_CHUNK = 1024 * 1024

_lock = threading.Lock()
_states: OrderedDict[tuple[str, str], tuple[int, Any]] = OrderedDict()


def _key(upload_id, created_at) -> tuple[str, str]:
    return (str(upload_id), created_at.isoformat() if created_at else "")


def resume(*, upload_id, created_at, offset: int) -> Any | None:
    """The running SHA-256 of the first `offset` bytes, or None when this process has none for
    exactly that offset (then the upload is hashed once, from its staged file, when it
    completes: a client sending each PATCH to another worker costs one extra read of the
    file, never one per PATCH)."""
    with _lock:
        found = _states.pop(_key(upload_id, created_at), None)
    if found is not None and found[0] == offset:
        return found[1]
    return hashlib.sha256() if offset == 0 else None


def file_digest(path: Path, size: int) -> str:
    """The SHA-256 of the first `size` bytes of a staged file, read once."""
    digest = hashlib.sha256()
    remaining = size
    with path.open("rb") as fh:
        while remaining > 0:
            chunk = fh.read(min(READ_CHUNK, remaining))
            if not chunk:
                raise OSError(f"staged file {path.name} is shorter than {size} bytes")
            digest.update(chunk)
            remaining -= len(chunk)
    return digest.hexdigest()


def keep(*, upload_id, created_at, offset: int, digest: Any) -> None:
    """Remember `digest` as covering the first `offset` bytes, for the next PATCH here."""
    with _lock:
        _states[_key(upload_id, created_at)] = (offset, digest)
        while len(_states) > MAX_STATES:
            _states.popitem(last=False)


def forget(*, upload_id, created_at) -> None:
    with _lock:
        _states.pop(_key(upload_id, created_at), None)


def held() -> int:
    """How many states this process holds (tests)."""
    with _lock:
        return len(_states)


# hashlib lets go of the GIL while it hashes a large piece: on a thread of its own, a piece is
# hashed while the request thread reads the next one from the socket and writes it to disk.
_hashers = ThreadPoolExecutor(max_workers=8, thread_name_prefix="upload-hash")
BACKGROUND_MIN_BYTES = 64 * 1024


class Overlapped:
    """Feeds pieces to some digests on a hashing thread, one piece at a time and in order (a
    piece is handed over once the one before it is hashed, so at most one waits in memory).
    `wait()` before reading a digest."""

    def __init__(self, digests: list[Any]):
        self.digests = digests
        self._pending: Future | None = None

    def update(self, piece: bytes) -> None:
        if not self.digests:
            return
        self.wait()
        if len(piece) < BACKGROUND_MIN_BYTES:
            self._feed(piece)  # a thread hop costs more than hashing a small piece
        else:
            self._pending = _hashers.submit(self._feed, piece)

    def _feed(self, piece: bytes) -> None:
        for digest in self.digests:
            digest.update(piece)

    def wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()
