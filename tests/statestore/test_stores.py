"""State store behaviour against a real redis-server the suite starts (never :6379)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule

from statestore import StateStore, TurnBinding, open_store
from statestore.memory import MemoryStore
from statestore.redis import RedisStore
from tests.pool.fakes import FakeClock
from tests.support import RedisServer, unique_prefix


class CountingHooks:
    def __init__(self) -> None:
        self.ops: list[tuple[str, bool]] = []
        self.cache: list[bool] = []
        self.bind_failures: list[tuple[str, str, str]] = []

    def on_op(self, op: str, seconds: float, ok: bool) -> None:
        self.ops.append((op, ok))

    def on_cache(self, hit: bool) -> None:
        self.cache.append(hit)

    def on_bind_failure(self, group: str, account_id: str, response_id: str, error: str) -> None:
        self.bind_failures.append((group, account_id, response_id))


def binding(rid: str = "resp_1", **kw: object) -> TurnBinding:
    fields: dict[str, object] = {
        "group": "g",
        "account_id": "acct-a",
        "response_id": rid,
        "session_key": "sess-1",
        "pending_calls": {"call_1": "function_call", "call_2": "custom_tool_call"},
        "turn_state": "ts-1",
        "conn_id": "gw:acct-a:1",
    }
    fields.update(kw)
    return TurnBinding(**fields)  # type: ignore[arg-type]


@pytest.fixture
async def pair(
    redis_server: RedisServer, key_prefix: str
) -> AsyncIterator[tuple[StateStore, StateStore, CountingHooks]]:
    hooks = CountingHooks()
    a = open_store(redis_server.url, key_prefix=key_prefix)
    b = open_store(redis_server.url, key_prefix=key_prefix, hooks=hooks)
    yield a, b, hooks
    await a.aclose()
    await b.aclose()


def test_url_picks_the_backend() -> None:
    assert isinstance(open_store("memory://"), MemoryStore)
    assert isinstance(open_store("redis://127.0.0.1:1/0"), RedisStore)
    with pytest.raises(ValueError, match="'mongodb'"):
        open_store("mongodb://x")


async def test_second_instance_sees_the_bind_including_pending_calls(
    pair: tuple[StateStore, StateStore, CountingHooks],
) -> None:
    a, b, hooks = pair
    assert (await a.bind_turn(binding())).ok
    found = await b.lookup("g", response_id="resp_1", session_key="sess-1")
    assert found.account_id == "acct-a"
    assert found.pending_calls == {"call_1": "function_call", "call_2": "custom_tool_call"}
    assert found.session_last_response_id == "resp_1" and found.turn_state == "ts-1"
    assert found.conn_id is None  # the socket id means nothing on another instance
    assert not found.degraded and found.source == "redis"
    assert a.get_conn_id("resp_1") == "gw:acct-a:1"
    # backfilled: the response's records now come from b's hot cache
    assert hooks.cache == [False]
    again = await b.lookup("g", response_id="resp_1", session_key=None)
    assert again.source == "cache" and hooks.cache == [False, True]
    assert await b.get_response_account("other-group", "resp_1") is None  # groups are isolated


async def test_session_records_are_not_served_stale_from_cache(
    pair: tuple[StateStore, StateStore, CountingHooks],
) -> None:
    a, b, _ = pair
    await a.bind_turn(binding("resp_1"))
    assert await b.get_session_last_response("g", "sess-1") == "resp_1"
    await a.bind_turn(binding("resp_2"))  # the conversation moved on elsewhere
    assert await b.get_session_last_response("g", "sess-1") == "resp_2"


async def test_bind_is_one_round_trip(redis_server: RedisServer, key_prefix: str) -> None:
    store = open_store(redis_server.url, key_prefix=key_prefix)
    assert isinstance(store, RedisStore)
    calls = 0
    original = store._redis.connection_pool.get_connection

    async def counting(*args: object, **kwargs: object) -> object:
        nonlocal calls
        calls += 1
        return await original(*args, **kwargs)  # type: ignore[arg-type]

    store._redis.connection_pool.get_connection = counting  # type: ignore[method-assign]
    sent: list[int] = []
    conn = await original()
    real_send = conn.send_packed_command

    async def counting_send(command: object, check_health: bool = True) -> None:
        sent.append(1)
        await real_send(command, check_health)  # type: ignore[arg-type]

    conn.send_packed_command = counting_send  # type: ignore[method-assign]
    await store._redis.connection_pool.release(conn)
    assert (await store.bind_turn(binding())).ok
    assert calls == 1 and len(sent) == 1  # four SETs, one connection, one write
    await store.aclose()


async def test_ttl_is_set_on_every_key(redis_server: RedisServer, key_prefix: str) -> None:
    store = open_store(redis_server.url, key_prefix=key_prefix, response_ttl_s=77)
    await store.bind_turn(binding())
    raw = aioredis.Redis.from_url(redis_server.url)
    keys = [k async for k in raw.scan_iter(f"{key_prefix}:*")]
    assert len(keys) == 4
    for key in keys:
        assert 70 <= await raw.ttl(key) <= 77
        assert b"{" in key and b"}" in key  # hash tags for Redis Cluster
    await raw.aclose()
    await store.aclose()


async def test_real_ttl_expiry(redis_server: RedisServer, key_prefix: str) -> None:
    writer = open_store(redis_server.url, key_prefix=key_prefix, response_ttl_s=1)
    await writer.bind_turn(binding())
    reader = open_store(redis_server.url, key_prefix=key_prefix, response_ttl_s=1)  # same config
    assert await reader.get_response_account("g", "resp_1") == "acct-a"  # cached by the reader too
    deadline = time.monotonic() + 5
    while await reader.get_response_account("g", "resp_1") is not None:
        assert time.monotonic() < deadline, "binding never expired"
        await asyncio.sleep(0.1)
    await writer.aclose()
    await reader.aclose()


async def test_memory_ttl_and_lru_with_injected_clock() -> None:
    clock = FakeClock()
    store = open_store("memory://", response_ttl_s=10, cache_max_entries=2, clock=clock)
    await store.bind_turn(binding("r1", session_key=None))
    clock.advance(9)
    assert await store.get_response_account("g", "r1") == "acct-a"
    clock.advance(2)
    assert await store.get_response_account("g", "r1") is None
    for rid in ("r2", "r3", "r4"):
        await store.bind_turn(binding(rid, session_key=None))
    assert await store.get_response_account("g", "r2") is None  # evicted, least recently used
    assert await store.get_pending_calls("g", "r4") == {
        "call_1": "function_call",
        "call_2": "custom_tool_call",
    }
    await store.forget_response("g", "r4")
    assert await store.get_pending_calls("g", "r4") is None


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    server = RedisServer().start()  # this test pauses it: not the shared one
    try:
        yield server
    finally:
        server.stop()


async def test_partition_degrades_within_the_deadline_and_recovers(
    own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    prefix = unique_prefix("part")
    hooks = CountingHooks()
    store = open_store(own_redis.url, key_prefix=prefix, op_timeout_ms=150, hooks=hooks)
    await store.bind_turn(binding("resp_1"))
    own_redis.pause()
    try:
        budget = 0.150 + 0.050
        started = time.perf_counter()
        found = await store.lookup("g", response_id="resp_1", session_key="sess-1")
        assert time.perf_counter() - started < budget
        assert (
            found.degraded
            and found.account_id == "acct-a"
            and found.session_last_response_id == "resp_1"
        )
        with caplog.at_level(logging.WARNING, logger="statestore"):
            started = time.perf_counter()
            outcome = await store.bind_turn(binding("resp_2", account_id="acct-b"))
            assert time.perf_counter() - started < budget
        assert not outcome.ok and outcome.degraded
        record = next(r for r in caplog.records if getattr(r, "event", "") == "bind_failed")
        assert (record.group, record.account_id, record.response_id) == ("g", "acct-b", "resp_2")  # type: ignore[attr-defined]
        assert hooks.bind_failures == [("g", "acct-b", "resp_2")]
        started = time.perf_counter()
        assert await store.ping() is False
        assert time.perf_counter() - started < budget
        assert (
            await store.get_response_account("g", "resp_2") == "acct-b"
        )  # the local write survived
    finally:
        own_redis.resume()
    deadline = time.monotonic() + 5
    while not await store.ping():
        assert time.monotonic() < deadline, "store did not reconnect after SIGCONT"
        await asyncio.sleep(0.05)
    assert (await store.bind_turn(binding("resp_3"))).ok
    assert (
        await store.lookup("g", response_id="resp_3", session_key="sess-1")
    ).session_last_response_id == "resp_3"
    await store.aclose()


class SameAnswers(RuleBasedStateMachine):
    """The memory and Redis backends answer the same for the same operations."""

    url = ""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        prefix = unique_prefix("eq")
        self.memory = open_store("memory://")
        self.redis = open_store(self.url, key_prefix=prefix)

    def both(self, make: object) -> tuple[object, object]:
        async def run() -> tuple[object, object]:
            return await make(self.memory), await make(self.redis)  # type: ignore[operator]

        return self.loop.run_until_complete(run())

    @rule(
        rid=st.sampled_from(["r1", "r2", "r3"]),
        acct=st.sampled_from(["a", "b"]),
        sess=st.sampled_from([None, "s1", "s2"]),
        calls=st.dictionaries(
            st.sampled_from(["c1", "c2"]),
            st.sampled_from(["function_call", "custom_tool_call"]),
            max_size=2,
        ),
    )
    def bind(self, rid: str, acct: str, sess: str | None, calls: dict[str, str]) -> None:
        b = TurnBinding(
            group="g",
            account_id=acct,
            response_id=rid,
            session_key=sess,
            pending_calls=calls,
            turn_state=f"ts-{rid}",
        )
        mem, red = self.both(lambda s: s.bind_turn(b))
        assert mem.ok and red.ok  # type: ignore[attr-defined]

    @rule(rid=st.sampled_from([None, "r1", "r2", "r3"]), sess=st.sampled_from([None, "s1", "s2"]))
    def lookup(self, rid: str | None, sess: str | None) -> None:
        mem, red = self.both(lambda s: s.lookup("g", response_id=rid, session_key=sess))
        fields = ("account_id", "pending_calls", "session_last_response_id", "turn_state")
        assert [getattr(mem, f) for f in fields] == [getattr(red, f) for f in fields]

    @rule(rid=st.sampled_from(["r1", "r2", "r3"]))
    def forget(self, rid: str) -> None:
        self.both(lambda s: s.forget_response("g", rid))

    def teardown(self) -> None:
        self.loop.run_until_complete(self.redis.aclose())
        self.loop.close()


def test_memory_and_redis_give_the_same_answers(redis_server: RedisServer) -> None:
    SameAnswers.url = redis_server.url
    case = SameAnswers.TestCase
    case.settings = settings(max_examples=25, stateful_step_count=15, deadline=None)
    case().runTest()
