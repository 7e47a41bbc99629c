"""Request bodies read in large pieces under gunicorn (installed by gunicorn.conf.py).

gunicorn 23 hands a body to the application 1 KiB at a time (`Body.read` asks its reader for
1024 bytes per loop, re-buffering the rest each time) from 8 KiB socket reads: 6,426 reads
for a 50 MB tus PATCH, and a bare WSGI app that only reads the body stops at about 179 MB/s.
Here `Body.read(n)` asks for everything still missing at once and the socket is read up to
256 KiB at a time. Behaviour is unchanged (same bytes, same limits, same parsers); only the
piece sizes differ. ATLAS_GUNICORN_STOCK_BODY=true leaves gunicorn as it ships (the uploads
bench runs both to measure the difference).
"""

from __future__ import annotations

import io
import os

SOCKET_READ_BYTES = 256 * 1024
MIN_READ_BYTES = 1024


def _read(self, size=None):
    """gunicorn.http.body.Body.read, asking its reader for all that is missing at once."""
    size = self.getsize(size)
    if size == 0:
        return b""
    while size > self.buf.tell():
        data = self.reader.read(max(MIN_READ_BYTES, size - self.buf.tell()))
        if not data:
            break
        self.buf.write(data)
    data = self.buf.getvalue()
    ret, rest = data[:size], data[size:]
    self.buf = io.BytesIO()
    self.buf.write(rest)
    return ret


def _socket_unreader_init(self, sock, max_chunk=SOCKET_READ_BYTES):
    """gunicorn.http.unreader.SocketUnreader.__init__, with socket reads of 256 KiB."""
    from gunicorn.http.unreader import Unreader

    Unreader.__init__(self)
    self.sock = sock
    self.mxchunk = max(max_chunk, SOCKET_READ_BYTES)


def install() -> bool:
    """Patch gunicorn's body reading (idempotent); False, and nothing changed, when turned
    off."""
    if os.environ.get("ATLAS_GUNICORN_STOCK_BODY", "").lower() in {"1", "true", "yes"}:
        return False
    from gunicorn.http import body, unreader

    unreader.SocketUnreader.__init__ = _socket_unreader_init  # type: ignore[method-assign]
    body.Body.read = _read  # type: ignore[method-assign]
    return True
