"""Redis failure degrades, never blocks: a SIGSTOPped redis-server (a partition)
and a one-sided partition. These tests pause their own server, never the shared one."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Iterator
from typing import TypeVar

import pytest
import redis.asyncio as aioredis

from statestore import StateStore, open_store
from statestore.redisstore import RedisStore
from tests.statestore.support import PENDING, RecordingHooks, as_redis, binding
from tests.support import RedisServer, eventually, free_port, unique_prefix

T = TypeVar("T")
OP_TIMEOUT_MS = 150
# A liveness guard, not a latency measurement: without its own deadline an op against a
# SIGSTOPped server waits forever, so anything far past the deadline means it hangs.
NEVER_HANGS_S = 1.0


@pytest.fixture(scope="module")
def own_redis() -> Iterator[RedisServer]:
    server = RedisServer().start()  # paused below: not the shared session server
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def store(own_redis: RedisServer) -> AsyncIterator[StateStore]:
    s = open_store(own_redis.url, key_prefix=unique_prefix("part"), op_timeout_ms=OP_TIMEOUT_MS)
    yield s
    await s.aclose()


async def within_budget(call: Awaitable[T]) -> T:
    async with asyncio.timeout(NEVER_HANGS_S):
        return await call


async def wait_until_reachable(store: StateStore) -> None:
    await eventually(store.ping, interval=0.02, what="the store recovering after SIGCONT")


async def test_every_op_answers_from_the_cache_within_the_deadline_then_recovers(
    own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    prefix, hooks = unique_prefix("part"), RecordingHooks()
    store = open_store(own_redis.url, key_prefix=prefix, op_timeout_ms=OP_TIMEOUT_MS, hooks=hooks)
    other = open_store(own_redis.url, key_prefix=prefix, op_timeout_ms=OP_TIMEOUT_MS)
    assert (await store.bind_turn(binding("resp_1"))).ok
    own_redis.pause()
    try:
        found = await within_budget(store.lookup("g", response_id="resp_1", session_key="sess-1"))
        assert found.degraded and found.source == "cache"
        assert (found.account_id, found.pending_calls) == ("acct-a", PENDING)
        assert (found.session_last_response_id, found.turn_state) == ("resp_1", "ts-1")
        with caplog.at_level(logging.WARNING, logger="statestore"):
            outcome = await within_budget(store.bind_turn(binding("resp_2", account_id="acct-b")))
        assert not outcome.ok and outcome.degraded
        assert (outcome.error or "").startswith("TimeoutError")  # its own deadline ended it
        [record] = [r for r in caplog.records if r.name == "statestore"]
        assert record.levelno == logging.WARNING
        assert (record.event, record.group, record.account_id, record.response_id) == (  # type: ignore[attr-defined]
            "bind_failed",
            "g",
            "acct-b",
            "resp_2",
        )
        assert [f[:3] for f in hooks.bind_failures] == [("g", "acct-b", "resp_2")]
        # The local write survived and every single read still answers.
        assert await within_budget(store.get_response_account("g", "resp_2")) == "acct-b"
        assert await within_budget(store.get_pending_calls("g", "resp_2")) == PENDING
        assert await within_budget(store.get_session_last_response("g", "sess-1")) == "resp_2"
        assert await within_budget(store.get_turn_state("g", "sess-1")) == "ts-1"
        cold = await within_budget(other.lookup("g", response_id="resp_1", session_key=None))
        assert cold.degraded and cold.account_id is None and cold.source == "miss"
        await within_budget(store.forget_response("g", "nope"))
        assert await within_budget(store.ping()) is False
    finally:
        own_redis.resume()
    await wait_until_reachable(store)
    assert (await store.bind_turn(binding("resp_3"))).ok  # same store, nothing restarted
    found = await other.lookup("g", response_id="resp_3", session_key="sess-1")
    assert (found.account_id, found.session_last_response_id) == ("acct-a", "resp_3")
    assert not found.degraded
    await store.aclose()
    await other.aclose()


async def test_a_timed_out_connection_is_discarded_not_reused(
    own_redis: RedisServer, store: StateStore
) -> None:
    """One connection only: if the reply to the timed-out read were left on it, the next
    command would read that stale reply instead of its own."""
    prefix = as_redis(store).keys.prefix
    reader = open_store(own_redis.url, key_prefix=prefix, pool_max_connections=1)
    await store.bind_turn(binding("r_old", account_id="acct-old", session_key="s-old"))
    await store.bind_turn(binding("r_new", account_id="acct-new", session_key="s-new"))
    assert await reader.ping()
    own_redis.pause()
    try:
        lost = await within_budget(reader.lookup("g", response_id="r_old", session_key="s-old"))
        assert lost.degraded and lost.account_id is None
        assert not (await within_budget(reader.bind_turn(binding("r_x", session_key="s-x")))).ok
    finally:
        own_redis.resume()
    await wait_until_reachable(reader)
    for _ in range(3):
        found = await reader.lookup("g", response_id="r_new", session_key="s-new")
        assert (found.account_id, found.session_last_response_id) == ("acct-new", "r_new")
        assert not found.degraded
        assert await reader.get_session_last_response("g", "s-old") == "r_old"
    await reader.aclose()


async def test_a_burst_during_the_partition_leaks_no_connections(
    own_redis: RedisServer, store: StateStore
) -> None:
    small = open_store(
        own_redis.url,
        key_prefix=as_redis(store).keys.prefix,
        op_timeout_ms=OP_TIMEOUT_MS,
        pool_max_connections=2,
    )
    await small.bind_turn(binding("seed"))
    own_redis.pause()
    try:
        lookups, binds = await within_budget(
            asyncio.gather(
                asyncio.gather(
                    *(
                        small.lookup("g", response_id=f"c{i}", session_key="sess-1")
                        for i in range(20)
                    )
                ),
                asyncio.gather(*(small.bind_turn(binding(f"b{i}")) for i in range(5))),
            )
        )  # waiting for a pooled connection is bounded too
        assert all(r.degraded for r in lookups) and all(b.degraded for b in binds)
    finally:
        own_redis.resume()
    await wait_until_reachable(small)
    pool = as_redis(small).pool
    assert not pool._in_use_connections  # every connection came back to the pool
    results = await asyncio.gather(
        *(small.lookup("g", response_id="seed", session_key="sess-1") for _ in range(20))
    )
    assert not any(r.degraded for r in results)
    await small.aclose()


async def move_to(store: RedisStore, port: int) -> int:
    """Point the store's future connections at ``port``; returns the previous port. With
    a dead port this is a one-sided partition: this instance alone loses Redis, and
    unlike a SIGSTOPped server nothing it sent can arrive later."""
    previous = int(store.pool.connection_kwargs["port"])
    await store.pool.disconnect()
    store.pool.reset()  # type: ignore[no-untyped-call]  # forget the old Connection objects: they keep their own address
    store.pool.connection_kwargs["port"] = port
    return previous


async def test_failed_binds_are_written_back_after_the_partition(
    own_redis: RedisServer, store: StateStore
) -> None:
    a = as_redis(store)
    other = open_store(own_redis.url, key_prefix=a.keys.prefix)
    await a.bind_turn(binding("r1"))
    real_port = await move_to(a, free_port())
    failed = binding("r2", account_id="acct-b", pending_calls={"c7": "function_call"})
    assert not (await within_budget(a.bind_turn(failed))).ok
    await move_to(a, real_port)  # healed
    # Redis still says r1, but this instance knows better and nobody moved the session on.
    found = await a.lookup("g", response_id=None, session_key="sess-1")
    assert found.session_last_response_id == "r2" and not found.degraded
    assert await other.get_response_account("g", "r2") is None  # not written back yet
    assert (await a.bind_turn(binding("r9", session_key="elsewhere"))).ok  # carries it
    assert a.unsynced.batch(10) == []
    found = await other.lookup("g", response_id="r2", session_key="sess-1")
    assert (found.account_id, found.pending_calls) == ("acct-b", {"c7": "function_call"})
    assert found.session_last_response_id == "r2"
    await other.aclose()


async def test_a_timed_out_write_may_still_land_and_redis_then_wins(
    own_redis: RedisServer, store: StateStore
) -> None:
    """A SIGSTOPped server reads the bytes already sent once it resumes: the timed-out
    bind lands late. The store must then agree with Redis, not double-apply anything."""
    other = open_store(own_redis.url, key_prefix=as_redis(store).keys.prefix)
    await store.bind_turn(binding("r1"))
    own_redis.pause()
    try:
        assert not (await within_budget(store.bind_turn(binding("r2", account_id="acct-b")))).ok
    finally:
        own_redis.resume()
    await wait_until_reachable(store)

    async def late_write_landed() -> bool:
        return await other.get_response_account("g", "r2") == "acct-b"

    await eventually(late_write_landed, interval=0.02, what="the late write landing")
    assert await store.get_session_last_response("g", "sess-1") == "r2"
    assert await other.get_session_last_response("g", "sess-1") == "r2"
    assert (await store.bind_turn(binding("r3"))).ok
    assert await other.get_session_last_response("g", "sess-1") == "r3"
    await other.aclose()


async def test_write_back_never_clobbers_a_session_another_instance_moved_on(
    own_redis: RedisServer, store: StateStore
) -> None:
    a = as_redis(store)
    b = open_store(own_redis.url, key_prefix=a.keys.prefix)
    await a.bind_turn(binding("r1"))
    real_port = await move_to(a, free_port())
    assert not (await a.bind_turn(binding("r2", turn_state="ts-a"))).ok
    assert (await b.bind_turn(binding("r3", account_id="acct-b", turn_state="ts-b"))).ok
    await move_to(a, real_port)  # healed
    found = await a.lookup("g", response_id=None, session_key="sess-1")
    assert (found.session_last_response_id, found.turn_state) == ("r3", "ts-b")
    assert (await a.bind_turn(binding("r9", session_key="elsewhere"))).ok  # replays r2
    assert await b.get_session_last_response("g", "sess-1") == "r3"
    assert await b.get_turn_state("g", "sess-1") == "ts-b"
    assert await b.get_response_account("g", "r2") == "acct-a"  # its own keys did arrive
    await b.aclose()


async def test_a_write_back_redis_refuses_is_dropped_not_fatal(
    own_redis: RedisServer, store: StateStore
) -> None:
    a = as_redis(store)
    b = open_store(own_redis.url, key_prefix=a.keys.prefix)
    await a.bind_turn(binding("r1"))
    real_port = await move_to(a, free_port())
    assert not (await a.bind_turn(binding("r2"))).ok
    await move_to(a, real_port)
    raw = aioredis.Redis.from_url(own_redis.url)
    last_key = a.keys.session("g", "sess-1")[0]
    await raw.delete(last_key)
    await raw.rpush(last_key, "not-a-string")  # the write-back's GET now fails: WRONGTYPE
    assert (await a.bind_turn(binding("r9", session_key="elsewhere"))).ok
    assert not a.unsynced
    assert await b.get_session_last_response("g", "elsewhere") == "r9"
    assert (await a.bind_turn(binding("r10", session_key="elsewhere"))).ok
    await raw.aclose()
    await b.aclose()
