"""A tarpit: a TCP server that accepts every connection and never answers (the fairness
tests and bench/outbox.py's tarpit scenario)."""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading


class Tarpit:
    """A TCP server on 127.0.0.1 that accepts every connection and never answers; counts the
    connections open at once (each one a send hanging in some worker's slot)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(512)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.open = self.max_open = 0
        self.closed = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        sel = selectors.DefaultSelector()
        sel.register(self.sock, selectors.EVENT_READ)
        while not self.closed.is_set():
            for key, _ in sel.select(timeout=0.1):
                if key.fileobj is self.sock:
                    with contextlib.suppress(BlockingIOError):
                        conn, _ = self.sock.accept()
                        conn.setblocking(False)
                        sel.register(conn, selectors.EVENT_READ)
                        self.accepted += 1
                        self.open += 1
                        self.max_open = max(self.max_open, self.open)
                    continue
                try:
                    data = key.fileobj.recv(65536)  # read the request, never answer it
                except BlockingIOError:
                    continue
                except ConnectionError:
                    data = b""
                if not data:  # the worker gave up (timeout) and closed it
                    sel.unregister(key.fileobj)
                    key.fileobj.close()
                    self.open -= 1
        for key in list(sel.get_map().values()):
            key.fileobj.close()
        sel.close()

    def close(self):
        self.closed.set()
