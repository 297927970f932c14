"""The client socket's idle deadline: a waiting reader is cancelled only once it has
really been idle past its deadline with no turn in flight; frames and turns move the
deadline instead of arming new timers. Time is moved by hand (``ManualTimers``)."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from typing import Any, cast

from gateway.idle import IdleTimer
from tests.support import eventually


class _Handle:
    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self._when = when
        self.callback = callback
        self.cancelled = False

    def when(self) -> float:
        return self._when

    def cancel(self) -> None:
        self.cancelled = True


class ManualTimers:
    """The two loop methods IdleTimer uses (time, call_at), on a clock moved by hand."""

    def __init__(self) -> None:
        self.now = 0.0
        self._heap: list[tuple[float, int, _Handle]] = []
        self._order = itertools.count()
        self.armed = 0  # timers ever armed

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], None]) -> _Handle:
        handle = _Handle(when, callback)
        heapq.heappush(self._heap, (when, next(self._order), handle))
        self.armed += 1
        return handle

    def advance_to(self, when: float) -> None:
        self.now = when
        while self._heap and self._heap[0][0] <= when:
            _, _, handle = heapq.heappop(self._heap)
            if not handle.cancelled:
                handle.callback()


class Reader:
    """Waits for a 'frame' the way the session's receive does."""

    def __init__(self, idle: IdleTimer, timeout: float) -> None:
        self.idle = idle
        self.timeout = timeout
        self.frame = asyncio.Event()
        self.task: asyncio.Task[str] = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> str:
        while True:
            self.idle.arm(self.timeout)
            try:
                await self.frame.wait()
            except asyncio.CancelledError:
                if not self.idle.expired():
                    raise
                return "idle"
            finally:
                self.idle.disarm()
            self.frame.clear()  # a frame came: wait for the next one

    async def receive_frame(self) -> None:
        self.frame.set()
        await eventually(lambda: not self.frame.is_set(), interval=0, what="frame taken")


def timer(busy: Callable[[], bool] = lambda: False) -> tuple[IdleTimer, ManualTimers]:
    timers = ManualTimers()
    return IdleTimer(cast(Any, timers), busy), timers


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


async def test_a_reader_idle_past_its_deadline_is_cancelled_once_and_not_left_cancelling() -> None:
    idle, timers = timer()
    reader = Reader(idle, timeout=10.0)
    await settle()
    timers.advance_to(9.9)
    await settle()
    assert not reader.task.done()
    timers.advance_to(10.0)
    assert await reader.task == "idle"
    assert reader.task.cancelling() == 0  # the timer's cancellation was consumed


async def test_a_frame_moves_the_deadline_without_arming_another_timer() -> None:
    idle, timers = timer()
    reader = Reader(idle, timeout=10.0)
    await settle()
    timers.now = 6.0
    await reader.receive_frame()  # waits again: deadline 16
    timers.advance_to(10.0)  # the first timer fires early and moves itself
    await settle()
    assert not reader.task.done()
    assert timers.armed == 2  # the first, and the one it moved to 16
    timers.advance_to(16.0)
    assert await reader.task == "idle"


async def test_a_turn_in_flight_is_not_idleness() -> None:
    turn = [True]
    idle, timers = timer(busy=lambda: turn[0])
    reader = Reader(idle, timeout=10.0)
    await settle()
    timers.advance_to(10.0)
    timers.advance_to(20.0)
    await settle()
    assert not reader.task.done()  # two idle periods passed inside a turn
    turn[0] = False
    timers.advance_to(29.0)
    await settle()
    assert not reader.task.done()  # a new period started at 20
    timers.advance_to(30.0)
    assert await reader.task == "idle"


async def test_a_shorter_timeout_than_the_armed_one_is_honoured() -> None:
    idle, timers = timer()
    idle.arm(100.0)
    idle.disarm()
    reader = Reader(idle, timeout=5.0)
    await settle()
    timers.advance_to(5.0)
    assert await reader.task == "idle"


async def test_a_cancellation_from_elsewhere_is_not_taken_for_idleness() -> None:
    idle, timers = timer()
    reader = Reader(idle, timeout=10.0)
    await settle()
    reader.task.cancel()
    await settle()
    assert reader.task.cancelled()
    timers.advance_to(10.0)  # the timer finds nobody waiting
    assert not idle.expired()


async def test_closing_stops_the_timer() -> None:
    idle, timers = timer()
    reader = Reader(idle, timeout=10.0)
    await settle()
    idle.close()
    timers.advance_to(50.0)
    await settle()
    assert not reader.task.done()
    reader.task.cancel()
