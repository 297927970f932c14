"""Waiting on a condition with a deadline, and a clock the test moves by hand."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def eventually(
    condition: Callable[[], T | Awaitable[T]],
    *,
    timeout: float = 5.0,
    interval: float = 0.001,
    what: str = "condition",
) -> T:
    """Poll ``condition()`` (sync or async) until it is truthy and return that value.

    Between polls other tasks run (``interval`` 0 just yields to the loop). Fails with
    ``AssertionError`` naming ``what`` once ``timeout`` seconds pass without it holding.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        if loop.time() >= deadline:
            raise AssertionError(f"{what} did not hold within {timeout:g}s (last: {value!r})")
        await asyncio.sleep(interval)


class FakeClock:
    """A monotonic clock for injection: call it for the time, ``advance`` to move it."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
