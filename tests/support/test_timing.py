"""The shared waiting helper and the hand-moved clock."""

from __future__ import annotations

import asyncio

import pytest

from tests.support import FakeClock, eventually


async def test_eventually_returns_the_first_truthy_value_once_other_tasks_ran() -> None:
    seen: list[int] = []

    async def producer() -> None:
        for i in range(3):
            seen.append(i)
            await asyncio.sleep(0)

    task = asyncio.create_task(producer())
    assert await eventually(lambda: len(seen) == 3 and list(seen), interval=0) == [0, 1, 2]
    await task


async def test_eventually_awaits_an_async_condition() -> None:
    calls = 0

    async def third_time() -> str | None:
        nonlocal calls
        calls += 1
        return "ready" if calls == 3 else None

    assert await eventually(third_time, interval=0) == "ready"
    assert calls == 3


async def test_eventually_fails_with_what_it_waited_for_and_the_last_value() -> None:
    with pytest.raises(AssertionError, match=r"the socket closing did not hold .*last: 0"):
        await eventually(lambda: 0, timeout=0.02, what="the socket closing")


def test_fake_clock_moves_only_when_told() -> None:
    clock = FakeClock(start=5.0)
    assert clock() == 5.0
    clock.advance(2.5)
    assert clock() == clock.now == 7.5
