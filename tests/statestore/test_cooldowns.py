"""Account cooldowns shared through the state store: one instance publishes a deadline,
every instance reads the deadlines of a group's accounts in one round trip."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot

from statestore import open_store
from statestore.keys import RedisKeys
from tests.statestore.support import FakeClock, RecordingHooks, count_round_trips
from tests.support import RedisServer, free_port


async def test_memory_cooldown_expires_with_its_ttl() -> None:
    clock = FakeClock()
    store = open_store("memory://", clock=clock)
    assert await store.publish_cooldown("g", "acct-a", 1_700_000_002.5, 2.0)
    assert await store.read_cooldowns("g", ["acct-a", "acct-b"]) == {"acct-a": 1_700_000_002.5}
    assert await store.read_cooldowns("h", ["acct-a"]) == {}  # groups never mix
    clock.advance(1.9)
    assert await store.read_cooldowns("g", ["acct-a"]) == {"acct-a": 1_700_000_002.5}
    clock.advance(0.1)
    assert await store.read_cooldowns("g", ["acct-a"]) == {}


async def test_a_cooldown_published_on_one_instance_is_read_on_another(
    redis_server: RedisServer, key_prefix: str
) -> None:
    one = open_store(redis_server.url, key_prefix=key_prefix, op_timeout_ms=3000)
    two = open_store(redis_server.url, key_prefix=key_prefix, op_timeout_ms=3000)
    raw = aioredis.Redis.from_url(redis_server.url)
    try:
        assert await one.publish_cooldown("g", "acct-a", 1_700_000_030.25, 30.0)
        assert await one.publish_cooldown("g", "acct-c", 1_700_000_010.0, 10.0)
        writes = await count_round_trips(two)
        found = await two.read_cooldowns("g", ["acct-a", "acct-b", "acct-c"])
        assert found == {"acct-a": 1_700_000_030.25, "acct-c": 1_700_000_010.0}
        assert len(writes) == 1  # one MGET for the whole list
        key = f"{key_prefix}:{{acct:g}}:acct-a:until"
        assert 29_000 < int(await raw.pttl(key)) <= 30_000  # the TTL is the cooldown
        # A later refusal replaces the deadline.
        assert await one.publish_cooldown("g", "acct-a", 1_700_000_005.0, 5.0)
        assert await two.read_cooldowns("g", ["acct-a"]) == {"acct-a": 1_700_000_005.0}
        await raw.set(f"{key_prefix}:{{acct:g}}:acct-b:until", b"soon")
        assert await two.read_cooldowns("g", ["acct-b"]) == {}  # unreadable: as if absent
        assert await two.read_cooldowns("g", []) == {}
    finally:
        await one.aclose()
        await two.aclose()
        await raw.aclose()


def test_every_account_of_a_group_shares_one_cluster_slot() -> None:
    keys = RedisKeys("rwg")
    slots = {key_slot(keys.account_until("team:x", a).encode()) for a in ("a", "b", "c{d}")}
    assert len(slots) == 1
    assert keys.account_until("team:x", "c{d}") == "rwg:{acct:team%3Ax}:c%7Bd%7D:until"


@pytest.mark.parametrize("ttl_s", [0.0, -1.0])
async def test_an_expired_cooldown_is_not_published(
    redis_server: RedisServer, key_prefix: str, ttl_s: float
) -> None:
    store = open_store(redis_server.url, key_prefix=key_prefix, op_timeout_ms=3000)
    try:
        assert await store.publish_cooldown("g", "acct-a", 1_700_000_000.0, ttl_s)
        assert await store.read_cooldowns("g", ["acct-a"]) == {}
    finally:
        await store.aclose()


async def test_unreachable_redis_answers_with_what_this_process_published() -> None:
    hooks = RecordingHooks()
    store = open_store(f"redis://127.0.0.1:{free_port()}/0", hooks=hooks, op_timeout_ms=200)
    try:
        assert not await store.publish_cooldown("g", "acct-a", 1_700_000_002.0, 2.0)
        assert await store.read_cooldowns("g", ["acct-a", "acct-b"]) == {"acct-a": 1_700_000_002.0}
        assert hooks.ops == [
            ("cooldown_publish", False),
            ("cooldown_read", False),
        ]
    finally:
        await store.aclose()


async def test_an_expired_cooldown_leaves_a_published_one_alone() -> None:
    store = open_store("memory://", clock=FakeClock())
    assert await store.publish_cooldown("g", "acct-a", 1_700_000_009.0, 9.0)
    assert await store.publish_cooldown("g", "acct-a", 1_700_000_000.0, 0.0)
    assert await store.read_cooldowns("g", ["acct-a"]) == {"acct-a": 1_700_000_009.0}
