"""A read deadline without a timer per read.

``asyncio.timeout`` costs ~4 µs per use (a timer armed and cancelled), which on a relay
is paid per event. Here one timer per connection is armed lazily and re-armed only when
it fires early (every read just moves the deadline); it fails the waiting read's future
with TimeoutError only when that read has really waited past its deadline.
"""

from __future__ import annotations

import asyncio


class ReadWatchdog:
    __slots__ = ("_deadline", "_handle", "_loop", "_waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._handle: asyncio.TimerHandle | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._deadline = 0.0

    def watch(self, waiter: asyncio.Future[None], timeout: float) -> None:
        """Fail ``waiter`` with TimeoutError if it is still pending ``timeout`` s from now."""
        self._deadline = self._loop.time() + timeout
        self._waiter = waiter
        if self._handle is None:
            self._handle = self._loop.call_at(self._deadline, self._check)

    def _check(self) -> None:
        self._handle = None
        waiter = self._waiter
        if waiter is None or waiter.done():
            return  # nobody is waiting; the next read arms a new timer
        if self._loop.time() < self._deadline:
            self._handle = self._loop.call_at(self._deadline, self._check)
            return
        waiter.set_exception(TimeoutError("upstream read deadline passed"))

    def close(self) -> None:
        self._waiter = None
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
