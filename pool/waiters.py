"""The FIFO of acquires waiting for a socket or a slot.

A waiter is a future: it is handed either an idle socket's entry or ``DIAL`` ("a slot
is reserved for you, dial"). A waiter that gave up (timeout, cancel) stays in the queue
until the pool removes it; ``next`` skips any that are already done.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from typing import Final

from pool.heap import Entry


class DialToken:
    """Handed to a waiter instead of a socket: a slot is reserved for it to dial into."""


DIAL: Final = DialToken()
Waiter = asyncio.Future[Entry | DialToken]


class WaiterQueue:
    __slots__ = ("_queue",)

    def __init__(self) -> None:
        self._queue: collections.deque[Waiter] = collections.deque()

    def __len__(self) -> int:
        return len(self._queue)

    def join(self) -> Waiter:
        """A new waiter at the back of the queue."""
        fut: Waiter = asyncio.get_running_loop().create_future()
        self._queue.append(fut)
        return fut

    def leave(self, fut: Waiter) -> None:
        with contextlib.suppress(ValueError):
            self._queue.remove(fut)

    def next(self) -> Waiter | None:
        """The oldest waiter still waiting (a done one is dropped on the way)."""
        queue = self._queue
        while queue:
            fut = queue.popleft()
            if not fut.done():
                return fut
        return None

    def anyone_waiting(self) -> bool:
        return any(not fut.done() for fut in self._queue)
