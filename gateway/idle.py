"""A client socket's idle deadline: one timer per socket instead of one per frame.

``asyncio.timeout`` around every receive arms and cancels a timer per client frame (about
8 µs each on a 2-core machine). Here a receive only moves a deadline; the socket's one
timer wakes when the deadline may have passed and re-arms itself if it moved. Only when
the reader has really waited past its deadline, with no turn in flight (a long turn is
not idleness), does it cancel the reader: at that moment the reader is suspended in its
receive and nowhere else, so the cancellation lands there and a frame already queued
stays queued.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class IdleTimer:
    __slots__ = (
        "_busy",
        "_deadline",
        "_expired",
        "_handle",
        "_loop",
        "_reader",
        "_timeout",
        "_waiting",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, busy: Callable[[], bool]) -> None:
        self._loop = loop
        self._busy = busy
        self._reader: asyncio.Task[object] | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._deadline = 0.0
        self._timeout = 0.0
        self._waiting = False
        self._expired = False

    def arm(self, timeout: float) -> None:
        """The current task starts waiting for a frame, idle for at most ``timeout`` s."""
        if self._reader is None:
            self._reader = asyncio.current_task()
        self._timeout = timeout
        deadline = self._deadline = self._loop.time() + timeout
        self._waiting = True
        handle = self._handle
        if handle is None or handle.when() > deadline:
            if handle is not None:
                handle.cancel()
            self._handle = self._loop.call_at(deadline, self._check)

    def disarm(self) -> None:
        """A frame came (or the wait ended otherwise): nothing to time until the next arm."""
        self._waiting = False

    def expired(self) -> bool:
        """Whether the reader's CancelledError came from this timer (then it is consumed:
        the reader carries on, not cancelled)."""
        if not self._expired:
            return False
        self._expired = self._waiting = False
        if self._reader is not None:
            self._reader.uncancel()
        return True

    def close(self) -> None:
        self._waiting = False
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _check(self) -> None:
        self._handle = None
        if not self._waiting:
            return  # the next arm starts the timer again
        now = self._loop.time()
        if now < self._deadline:
            self._handle = self._loop.call_at(self._deadline, self._check)
            return
        if self._busy():  # a turn in flight: a new idle period starts now
            self._deadline = now + self._timeout
            self._handle = self._loop.call_at(self._deadline, self._check)
            return
        if self._reader is not None and not self._reader.done():
            self._expired = True
            self._reader.cancel()
