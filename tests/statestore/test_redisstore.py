"""The Redis backend against a real redis-server the suite starts (never :6379)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import msgspec
import pytest
import redis.asyncio as aioredis

from statestore import Continuation, StateStore, open_store
from tests.statestore.support import (
    PENDING,
    FakeClock,
    RecordingHooks,
    as_redis,
    binding,
    count_round_trips,
)
from tests.support import RedisServer, eventually, free_port


@pytest.fixture
async def raw(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


@pytest.fixture
async def pair(
    redis_server: RedisServer, key_prefix: str
) -> AsyncIterator[tuple[StateStore, StateStore, RecordingHooks]]:
    """Two gateway instances sharing one Redis; the second one's hooks are recorded."""
    hooks = RecordingHooks()
    a = open_store(redis_server.url, key_prefix=key_prefix)
    b = open_store(redis_server.url, key_prefix=key_prefix, hooks=hooks)
    yield a, b, hooks
    await a.aclose()
    await b.aclose()


async def test_second_instance_continues_with_account_and_pending_calls(
    pair: tuple[StateStore, StateStore, RecordingHooks],
) -> None:
    a, b, hooks = pair
    assert (await a.bind_turn(binding("resp_1"))).ok
    found = await b.lookup("g", response_id="resp_1", session_key="sess-1")
    assert found.account_id == "acct-a"
    assert found.pending_calls == PENDING  # seed 000 gap 2: pending ids survive the hop
    assert (found.session_last_response_id, found.turn_state) == ("resp_1", "ts-1")
    assert found.conn_id is None  # a socket id means nothing on another instance
    assert not found.degraded and found.source == "redis"
    assert a.get_conn_id("resp_1") == "gw:acct-a:1" and b.get_conn_id("resp_1") is None
    # The answer was backfilled: the response records now come from b's own cache.
    assert hooks.cache == [False]
    again = await b.lookup("g", response_id="resp_1", session_key=None)
    assert (again.account_id, again.pending_calls, again.source) == ("acct-a", PENDING, "cache")
    with_session = await b.lookup("g", response_id="resp_1", session_key="sess-1")
    assert with_session.source == "mixed"  # response from cache, session from Redis
    assert hooks.cache == [False, True, True]
    assert await b.get_response_account("other-group", "resp_1") is None  # tenant isolation


async def test_binds_flow_both_ways_between_instances(
    pair: tuple[StateStore, StateStore, RecordingHooks],
) -> None:
    a, b, _ = pair
    await a.bind_turn(binding("r1"))
    await b.bind_turn(binding("r2", account_id="acct-b", pending_calls={"c9": "function_call"}))
    assert await a.get_response_account("g", "r2") == "acct-b"
    assert await a.get_pending_calls("g", "r2") == {"c9": "function_call"}
    assert await b.get_response_account("g", "r1") == "acct-a"
    assert await a.get_session_last_response("g", "sess-1") == "r2"


async def test_session_records_follow_the_conversation_not_the_cache(
    pair: tuple[StateStore, StateStore, RecordingHooks],
) -> None:
    a, b, _ = pair
    await a.bind_turn(binding("r1", turn_state="ts-a"))
    assert await b.get_session_last_response("g", "sess-1") == "r1"
    await a.bind_turn(binding("r2", turn_state="ts-b"))  # the conversation moved on elsewhere
    assert await b.get_session_last_response("g", "sess-1") == "r2"
    assert await b.get_turn_state("g", "sess-1") == "ts-b"


async def test_bind_is_one_round_trip_writing_every_key_with_the_ttl(
    redis_server: RedisServer, key_prefix: str, raw: aioredis.Redis
) -> None:
    store = open_store(redis_server.url, key_prefix=key_prefix, response_ttl_s=77)
    writes = await count_round_trips(store)
    assert (await store.bind_turn(binding("resp_1"))).ok
    assert len(writes) == 1  # four SETs, one socket write, one reply batch
    base_r, base_s = f"{key_prefix}:{{r:g:resp_1}}", f"{key_prefix}:{{s:g:sess-1}}"
    assert await raw.get(base_r + ":acct") == b"acct-a"
    pending = await raw.get(base_r + ":pend")
    assert isinstance(pending, bytes) and msgspec.json.decode(pending) == PENDING
    assert await raw.get(base_s + ":last") == b"resp_1"
    assert await raw.get(base_s + ":ts") == b"ts-1"
    keys = sorted([k async for k in raw.scan_iter(f"{key_prefix}:*")])
    assert len(keys) == 4
    for key in keys:
        assert 70_000 <= await raw.pttl(key) <= 77_000
    values = [await raw.get(k) for k in keys]
    assert all(b"gw:acct-a:1" not in (v or b"") for v in values)  # conn id stays local
    await store.aclose()


async def test_lookups_cost_one_round_trip_or_none(
    redis_server: RedisServer, key_prefix: str
) -> None:
    writer = open_store(redis_server.url, key_prefix=key_prefix)
    await writer.bind_turn(binding("resp_1"))
    reader = open_store(redis_server.url, key_prefix=key_prefix)
    writes = await count_round_trips(reader)
    cold = await reader.lookup("g", response_id="resp_1", session_key="sess-1")
    assert cold.account_id == "acct-a" and cold.session_last_response_id == "resp_1"
    assert len(writes) == 1  # response and session records in one pipeline
    hot = await reader.lookup("g", response_id="resp_1", session_key=None)
    assert hot.pending_calls == PENDING and len(writes) == 1  # cache hit: no Redis at all
    await reader.lookup("g", response_id="resp_1", session_key="sess-1")
    assert len(writes) == 2  # only the session part went to Redis
    await writer.aclose()
    await reader.aclose()


async def test_real_ttl_expiry(redis_server: RedisServer, key_prefix: str) -> None:
    writer = open_store(redis_server.url, key_prefix=key_prefix, response_ttl_s=1)
    await writer.bind_turn(binding("resp_1"))
    reader = open_store(redis_server.url, key_prefix=key_prefix, response_ttl_s=1)
    assert await reader.get_response_account("g", "resp_1") == "acct-a"

    async def expired() -> Continuation | None:
        found = await reader.lookup("g", response_id="resp_1", session_key="sess-1")
        gone = found.account_id is None and found.session_last_response_id is None
        return found if gone else None

    found = await eventually(expired, interval=0.05, what="the binding expiring")
    assert found.pending_calls is None and not found.degraded
    assert await writer.get_pending_calls("g", "resp_1") is None  # its cache expired too
    await writer.aclose()
    await reader.aclose()


async def test_hot_cache_expires_on_the_injected_clock(
    redis_server: RedisServer, key_prefix: str
) -> None:
    clock, hooks = FakeClock(), RecordingHooks()
    store = open_store(
        redis_server.url, key_prefix=key_prefix, response_ttl_s=60, clock=clock, hooks=hooks
    )
    await store.bind_turn(binding("resp_1"))
    assert (await store.lookup("g", response_id="resp_1", session_key=None)).source == "cache"
    clock.advance(60)  # the cache forgets; Redis (real time) still has it
    again = await store.lookup("g", response_id="resp_1", session_key=None)
    assert again.source == "redis" and again.account_id == "acct-a"
    assert store.get_conn_id("resp_1") is None  # local-only data is gone for good
    assert hooks.cache == [True, False]
    await store.aclose()


async def test_backfill_keeps_only_what_is_left_of_the_redis_ttl(
    redis_server: RedisServer, key_prefix: str, raw: aioredis.Redis
) -> None:
    writer = open_store(redis_server.url, key_prefix=key_prefix, response_ttl_s=100)
    await writer.bind_turn(binding("resp_1"))
    await raw.pexpire(f"{key_prefix}:{{r:g:resp_1}}:acct", 2000)
    clock, hooks = FakeClock(), RecordingHooks()
    reader = open_store(redis_server.url, key_prefix=key_prefix, clock=clock, hooks=hooks)
    assert await reader.get_response_account("g", "resp_1") == "acct-a"  # miss, backfill
    clock.advance(1.0)
    assert await reader.get_response_account("g", "resp_1") == "acct-a"  # hit
    clock.advance(1.5)  # past the 2 s Redis had left, far from the 100 s binding TTL
    assert await reader.get_response_account("g", "resp_1") == "acct-a"  # miss again
    assert hooks.cache == [False, True, False]
    await writer.aclose()
    await reader.aclose()


async def test_unreadable_pending_record_means_unknown(
    redis_server: RedisServer, key_prefix: str, raw: aioredis.Redis
) -> None:
    await raw.set(f"{key_prefix}:{{r:g:resp_1}}:acct", "acct-z")
    await raw.set(f"{key_prefix}:{{r:g:resp_1}}:pend", b"\xffnot json")
    store = open_store(redis_server.url, key_prefix=key_prefix)
    found = await store.lookup("g", response_id="resp_1", session_key=None)
    assert (found.account_id, found.pending_calls, found.degraded) == ("acct-z", None, False)
    await store.aclose()


async def test_forget_removes_both_layers(
    redis_server: RedisServer, key_prefix: str, raw: aioredis.Redis
) -> None:
    store = open_store(redis_server.url, key_prefix=key_prefix)
    await store.bind_turn(binding("resp_1"))
    await store.forget_response("g", "resp_1")
    assert await raw.exists(f"{key_prefix}:{{r:g:resp_1}}:acct") == 0
    assert await raw.exists(f"{key_prefix}:{{r:g:resp_1}}:pend") == 0
    found = await store.lookup("g", response_id="resp_1", session_key=None)
    assert found.account_id is None and found.source == "miss"
    assert store.get_conn_id("resp_1") is None
    await store.aclose()


async def test_unreachable_redis_degrades_to_local_state(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hooks = RecordingHooks()
    store = open_store(f"redis://127.0.0.1:{free_port()}/0", hooks=hooks)  # nothing listens
    with caplog.at_level(logging.WARNING, logger="statestore"):
        outcome = await store.bind_turn(binding("resp_1", account_id="acct-q"))
    assert not outcome.ok and outcome.degraded and outcome.error
    [record] = [r for r in caplog.records if r.name == "statestore"]
    assert record.levelno == logging.WARNING
    assert (record.event, record.group, record.account_id, record.response_id) == (  # type: ignore[attr-defined]
        "bind_failed",
        "g",
        "acct-q",
        "resp_1",
    )
    assert "acct-q" in record.getMessage() and "resp_1" in record.getMessage()
    assert [f[:3] for f in hooks.bind_failures] == [("g", "acct-q", "resp_1")]
    found = await store.lookup("g", response_id="resp_1", session_key="sess-1")
    assert found.degraded and found.source == "cache"
    assert (found.account_id, found.pending_calls) == ("acct-q", PENDING)
    assert found.session_last_response_id == "resp_1"
    assert await store.ping() is False
    assert ("bind", False) in hooks.ops and ("ping", False) in hooks.ops
    assert len(as_redis(store).unsynced) == 1  # kept for write-back
    await store.aclose()


async def test_a_stored_response_is_known_as_stored_on_another_instance(
    pair: tuple[StateStore, StateStore, RecordingHooks], raw: aioredis.Redis, key_prefix: str
) -> None:
    a, b, _ = pair
    await a.bind_turn(msgspec.structs.replace(binding("r_stored"), stored=True))
    await a.bind_turn(binding("r_plain"))
    assert (await b.lookup("g", response_id="r_stored", session_key=None)).stored
    assert not (await b.lookup("g", response_id="r_plain", session_key=None)).stored
    # Only a stored response costs the extra key; it lives in the response's slot.
    assert await raw.get(f"{key_prefix}:{{r:g:r_stored}}:stored") == b"1"
    assert await raw.get(f"{key_prefix}:{{r:g:r_plain}}:stored") is None
    # The instance that bound it answers from its own cache the same way.
    assert (await a.lookup("g", response_id="r_stored", session_key=None)).stored
    await b.forget_response("g", "r_stored")
    assert await raw.get(f"{key_prefix}:{{r:g:r_stored}}:stored") is None
