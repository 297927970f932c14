"""Cooldowns one instance finds are learned by the others through a shared Redis store."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Sequence
from typing import Any, cast

import pytest

from gateway.account_sync import CooldownSync
from gateway.accounts import AccountState, HealthPolicy, Scheduler
from gateway.config import Account
from statestore import StateStore, open_store
from tests.support import FakeClock, RedisServer, eventually

ACCOUNTS = {
    "a": Account(id="a", group="g"),
    "b": Account(id="b", group="g"),
    "x": Account(id="x", group="other"),
}


class Instance:
    """One gateway's scheduler and sync; its monotonic clock starts somewhere of its own."""

    def __init__(self, store: StateStore, wall: FakeClock, mono_start: float) -> None:
        self.mono = FakeClock(mono_start)
        self.scheduler = Scheduler(
            ACCOUNTS, policy=HealthPolicy(jitter=0.0), clock=self.mono, rng=random.Random(1)
        )
        self.sync = CooldownSync(
            self.scheduler, store, interval_s=0.01, monotonic=self.mono, wall=wall
        )
        self.scheduler.on_rate_limited = self.sync.publish
        self.store = store

    def advance(self, seconds: float) -> None:
        self.mono.advance(seconds)


@pytest.fixture
async def two(
    redis_server: RedisServer, key_prefix: str
) -> AsyncIterator[tuple[Instance, Instance, FakeClock]]:
    wall = FakeClock(1_700_000_000.0)
    # Generous deadlines: these tests are about what is learned, not about slow Redis.
    opts: dict[str, Any] = {"key_prefix": key_prefix, "op_timeout_ms": 3000}
    one = Instance(open_store(redis_server.url, **opts), wall, 100.0)
    two = Instance(open_store(redis_server.url, **opts), wall, 5000.0)
    yield one, two, wall
    for each in (one, two):
        await each.sync.aclose()
        await each.store.aclose()


async def test_a_cooldown_on_one_instance_cools_the_account_on_the_other(
    two: tuple[Instance, Instance, FakeClock],
) -> None:
    one, other, _ = two
    one.scheduler.rate_limited("a", 2.0)
    await one.sync.flush()
    assert other.scheduler.state("a") is AccountState.HEALTHY  # not read yet
    assert await other.sync.sync_once() == ["a"]
    assert other.scheduler.state("a") is AccountState.COOLING
    assert other.scheduler.until("a") == pytest.approx(5002.0)  # its own clock
    picked = other.scheduler.pick("g")
    assert picked is not None and picked.id == "b"  # new conversations avoid a
    assert other.scheduler.state("x") is AccountState.HEALTHY
    other.advance(2.0)
    assert other.scheduler.state("a") is AccountState.HEALTHY


async def test_a_deadline_already_past_on_the_wall_clock_is_ignored(
    two: tuple[Instance, Instance, FakeClock],
) -> None:
    one, other, wall = two
    one.scheduler.rate_limited("b", 30.0)
    await one.sync.flush()
    wall.advance(31.0)  # the record outlived its deadline (a slow expiry)
    assert await other.sync.sync_once() == []
    assert other.scheduler.state("b") is AccountState.HEALTHY


async def test_the_periodic_task_applies_published_cooldowns(
    two: tuple[Instance, Instance, FakeClock],
) -> None:
    one, other, _ = two
    other.sync.start()
    one.scheduler.rate_limited("a", 60.0)
    await eventually(
        lambda: other.scheduler.state("a") is AccountState.COOLING, what="a cooling on two"
    )
    await other.sync.aclose()
    await other.sync.aclose()  # closing twice is harmless


def test_publishing_without_an_event_loop_does_nothing() -> None:
    store = open_store("memory://")
    sched = Scheduler(ACCOUNTS, clock=FakeClock(), rng=random.Random(1))
    sync = CooldownSync(sched, store, interval_s=1.0, monotonic=FakeClock(), wall=FakeClock())
    sched.on_rate_limited = sync.publish
    sched.rate_limited("a", 2.0)  # a synchronous caller: nothing scheduled, nothing raised
    assert sched.state("a") is AccountState.COOLING
    assert asyncio.run(store.read_cooldowns("g", ["a"])) == {}


class SwallowsCancel:
    """A store whose read, like a Redis client call, may swallow the task's cancel."""

    def __init__(self) -> None:
        self.reading = asyncio.Event()
        self.reads = 0

    async def read_cooldowns(self, group: str, account_ids: Sequence[str]) -> dict[str, float]:
        self.reads += 1
        self.reading.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            pass
        return {}


async def test_closing_ends_the_loop_even_when_the_store_swallows_the_cancel() -> None:
    store = SwallowsCancel()
    sched = Scheduler(ACCOUNTS, clock=FakeClock(), rng=random.Random(1))
    sync = CooldownSync(
        sched, cast(StateStore, store), interval_s=0.001, monotonic=FakeClock(), wall=FakeClock()
    )
    sync.start()
    await asyncio.wait_for(store.reading.wait(), timeout=5)
    reads = store.reads
    await asyncio.wait_for(sync.aclose(), timeout=5)
    assert store.reads == reads  # no read after the close
