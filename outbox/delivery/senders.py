"""The send slots: `concurrency` coroutines on one event loop thread, each taking its next job
from the dispatch (delivery/dispatch.py: tenants take turns), sending it with the shared
client (delivery/client.py) and putting the Result in the job's sink (a thread-safe queue the
worker's thread reads). No database access here.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
from collections.abc import Awaitable, Callable

from outbox.delivery.client import Client
from outbox.delivery.dispatch import STOP, Dispatch
from outbox.delivery.send import Job, Result

logger = logging.getLogger("outbox.delivery")

SendFn = Callable[[Client, Job], Awaitable[Result]]


class _Handoff:
    """A parked sender's inbox, as the dispatch sees it: `put` (from any thread) resolves the
    future the sender awaits."""

    __slots__ = ("loop", "future")

    def __init__(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future):
        self.loop, self.future = loop, future

    def put(self, item) -> None:
        self.loop.call_soon_threadsafe(_resolve, self.future, item)


def _resolve(future: asyncio.Future, item) -> None:
    if not future.done():
        future.set_result(item)


class Senders:
    """Started on first use; `close` lets every sender finish its send, then stops the loop."""

    def __init__(self, dispatch: Dispatch, concurrency: int, send: SendFn):
        self.dispatch, self.concurrency, self.send = dispatch, concurrency, send
        self.loop: asyncio.AbstractEventLoop | None = None
        self.client = Client(pool_size=concurrency)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        self.loop = asyncio.new_event_loop()
        started = threading.Event()
        # the senders work in the scope of the thread that starts them (the worker's)
        self._thread = threading.Thread(
            target=contextvars.copy_context().run,
            args=(self._run, started),
            name="outbox-send-loop",
            daemon=True,
        )
        self._thread.start()
        started.wait()

    def _run(self, started: threading.Event) -> None:
        loop = self.loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        started.set()  # jobs handed over from now on wait in the loop's queue until it runs
        loop.run_until_complete(self._all())

    async def _all(self) -> None:
        try:
            await asyncio.gather(*(self._sender() for _ in range(self.concurrency)))
        finally:
            self.client.close()

    async def _sender(self) -> None:
        """Send, report, take the next job (or park until the dispatch hands one over)."""
        loop = asyncio.get_running_loop()
        dispatch, client, send = self.dispatch, self.client, self.send
        finished: Job | None = None
        while True:
            parked = loop.create_future()
            item = dispatch.next(_Handoff(loop, parked), finished)
            if item is None:
                item = await parked
            if item is STOP:
                return
            job, sink = item
            try:
                result = await send(client, job)
            except Exception:  # a bug in the send path: recorded as a retry, never lost
                logger.exception("send failed before reaching the receiver")
                result = Result(job, "retry", error="internal_error")
            sink.put(result)
            finished = job

    def close(self) -> None:
        """After `dispatch.stop()`: wait for the senders to finish and the loop to end."""
        if self._thread is None:
            return
        self._thread.join()
        assert self.loop is not None
        self.loop.close()
        self._thread = None
