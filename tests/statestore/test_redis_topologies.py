"""The Redis store on a real 3-primary Redis Cluster (with replicas) and on a real
Sentinel-managed primary: routing without redirections, one round trip per slot, and
failover (SIGKILL of the primary, a replica promoted) with write-back of failed binds."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from typing import TypeVar

import pytest
from redis.crc import key_slot

from statestore import StateStore, open_store
from tests.statestore.support import PENDING, ClusterTraffic, RecordingHooks, as_redis, binding
from tests.support import RedisServer, unique_prefix
from tests.support.redis_topologies import (
    RedisClusterSetup,
    run_redis_cluster,
    run_sentinel,
)

T = TypeVar("T")
OP_TIMEOUT_MS = 150
ROUTING_TIMEOUT_MS = 2000
NEVER_HANGS_S = 1.0  # far above the op deadline: an op waiting on a dead primary would hang


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterSetup]:
    with run_redis_cluster() as setup:
        yield setup


@pytest.fixture
async def cluster_pair(
    cluster: RedisClusterSetup, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[StateStore, StateStore, ClusterTraffic]]:
    prefix = unique_prefix("clu")
    traffic = ClusterTraffic().install(monkeypatch)
    # Generous deadlines: these tests are about routing, not timing, on a busy machine.
    writer = open_store(cluster.url, key_prefix=prefix, op_timeout_ms=ROUTING_TIMEOUT_MS)
    reader = open_store(cluster.url, key_prefix=prefix, op_timeout_ms=ROUTING_TIMEOUT_MS)
    assert await writer.ping() and await reader.ping()  # slot maps learned
    traffic.clear()
    yield writer, reader, traffic
    await writer.aclose()
    await reader.aclose()


def slot(key: str) -> int:
    return key_slot(key.encode())


async def test_turns_spread_over_every_primary_without_any_redirection(
    cluster_pair: tuple[StateStore, StateStore, ClusterTraffic],
) -> None:
    writer, reader, traffic = cluster_pair
    for n in range(40):
        b = binding(f"resp-{n}", session_key=f"sess-{n}", account_id=f"acct-{n % 3}")
        assert (await writer.bind_turn(b)).ok
    for n in range(40):
        found = await reader.lookup("g", response_id=f"resp-{n}", session_key=f"sess-{n}")
        assert not found.degraded and found.source == "redis"
        assert (found.account_id, found.pending_calls) == (f"acct-{n % 3}", PENDING)
        assert (found.session_last_response_id, found.turn_state) == (f"resp-{n}", "ts-1")
    assert len({node for node, _ in traffic.requests}) == 3  # every primary took a share
    assert traffic.errors == []  # no MOVED, ASK or CROSSSLOT reply
    assert traffic.single_commands == []  # nothing re-sent after a redirection
    await writer.forget_response("g", "resp-0")
    assert await writer.get_response_account("g", "resp-0") is None  # gone from Redis too


async def test_a_turn_is_one_round_trip_per_slot(
    cluster: RedisClusterSetup, cluster_pair: tuple[StateStore, StateStore, ClusterTraffic]
) -> None:
    writer, reader, traffic = cluster_pair
    keys = as_redis(writer).keys
    for n in range(12):
        rid, sess = f"r{n}", f"s{n}"
        response_slot = slot(keys.response("g", rid)[0])
        session_slot = slot(keys.session("g", sess)[0])
        nodes = {
            cluster.primary_port_for(keys.response("g", rid)[0]),
            cluster.primary_port_for(keys.session("g", sess)[0]),
        }
        traffic.clear()
        assert (await writer.bind_turn(binding(rid, session_key=sess))).ok
        # One request per node that owns a slot of the turn, each carrying only its slots.
        assert len(traffic.requests) == len(nodes) <= 2
        assert sorted(s for _, slots in traffic.requests for s in set(slots)) == sorted(
            {response_slot, session_slot}
        )
        traffic.clear()
        cold = await reader.lookup("g", response_id=rid, session_key=sess)
        assert cold.account_id == "acct-a" and cold.session_last_response_id == rid
        assert len(traffic.requests) == len(nodes)
        traffic.clear()
        # The response record is now cached: only the session's slot is asked.
        warm = await reader.lookup("g", response_id=rid, session_key=sess)
        assert warm.source == "mixed"
        assert [set(slots) for _, slots in traffic.requests] == [{session_slot}]
    assert traffic.errors == [] and traffic.single_commands == []


async def warmed(store: StateStore) -> None:
    """The first op also discovers the topology: on a busy machine give it a few tries."""
    deadline = time.monotonic() + 10
    while not await store.ping():
        assert time.monotonic() < deadline, "the store never reached Redis"
        await asyncio.sleep(0.05)


async def never_hangs(call: Awaitable[T]) -> T:
    async with asyncio.timeout(NEVER_HANGS_S):
        return await call


async def ride_out_failover(store: StateStore, other: StateStore, session: str) -> list[str]:
    """Bind and read one turn after another until binds reach Redis again. Every op
    answers (from the hot cache) while the primary is gone. Returns the failed binds."""
    failed: list[str] = []
    deadline = time.monotonic() + 40
    n = 0
    while True:
        n += 1
        rid = f"during-{n}"
        outcome = await never_hangs(store.bind_turn(binding(rid, session_key=session)))
        found = await never_hangs(store.lookup("g", response_id=rid, session_key=session))
        assert (found.account_id, found.pending_calls) == ("acct-a", PENDING)
        assert found.session_last_response_id == rid
        if outcome.ok:
            break
        assert outcome.degraded and outcome.error
        failed.append(rid)
        assert time.monotonic() < deadline, "binds never reached the promoted replica"
        await asyncio.sleep(0.05)
    assert failed, "the kill did not reach this session's primary"
    # Each successful bind carries a batch of the failed ones back to Redis.
    while as_redis(store).unsynced:
        n += 1
        assert (await store.bind_turn(binding(f"after-{n}", session_key="elsewhere"))).ok
    # ``other`` still holds the old primary (its pooled connections, a cluster's slot
    # map): its first op redials, relearns and answers from the new primary at once.
    found = await other.lookup("g", response_id=None, session_key=session)
    assert not found.degraded
    assert found.session_last_response_id == f"during-{len(failed) + 1}"
    return failed


async def test_cluster_primary_killed_mid_run(monkeypatch: pytest.MonkeyPatch) -> None:
    with run_redis_cluster() as setup:
        prefix, hooks = unique_prefix("clufail"), RecordingHooks()
        store = open_store(setup.url, key_prefix=prefix, op_timeout_ms=OP_TIMEOUT_MS, hooks=hooks)
        other = open_store(setup.url, key_prefix=prefix, op_timeout_ms=ROUTING_TIMEOUT_MS)
        await warmed(store)
        session = "sess-failover"
        assert (await store.bind_turn(binding("before", session_key=session))).ok
        assert await other.get_session_last_response("g", session) == "before"
        session_key = as_redis(store).keys.session("g", session)[0]
        dead = setup.primary_port_for(session_key)
        setup.node(dead).kill()
        failed = await ride_out_failover(store, other, session)
        assert setup.primary_port_for(session_key) != dead  # a replica took the slot over
        for rid in failed:  # written back to the new primary
            found = await other.lookup("g", response_id=rid, session_key=None)
            assert (found.account_id, found.pending_calls) == ("acct-a", PENDING)
        assert [f[2] for f in hooks.bind_failures] == failed
        await store.aclose()
        await other.aclose()


async def test_sentinel_primary_killed_mid_run() -> None:
    with run_sentinel() as setup:
        prefix, hooks = unique_prefix("senfail"), RecordingHooks()
        store = open_store(setup.url, key_prefix=prefix, op_timeout_ms=OP_TIMEOUT_MS, hooks=hooks)
        other = open_store(setup.url, key_prefix=prefix, op_timeout_ms=ROUTING_TIMEOUT_MS)
        await warmed(store)
        assert (await store.bind_turn(binding("before"))).ok
        assert await other.get_response_account("g", "before") == "acct-a"
        dead = setup.kill_primary().port
        failed = await ride_out_failover(store, other, "sess-1")
        assert setup.primary_port() != dead
        for rid in failed:
            found = await other.lookup("g", response_id=rid, session_key=None)
            assert (found.account_id, found.pending_calls) == ("acct-a", PENDING)
        assert [f[2] for f in hooks.bind_failures] == failed
        await store.aclose()
        await other.aclose()


async def test_sentinel_store_reads_what_another_instance_wrote() -> None:
    with run_sentinel() as setup:
        prefix = unique_prefix("sen")
        a = open_store(setup.url + "/2", key_prefix=prefix, op_timeout_ms=ROUTING_TIMEOUT_MS)
        b = open_store(setup.url + "/2", key_prefix=prefix, op_timeout_ms=ROUTING_TIMEOUT_MS)
        assert (await a.bind_turn(binding("r1"))).ok
        assert await a.ping() and await b.ping()
        found = await b.lookup("g", response_id="r1", session_key="sess-1")
        assert (found.account_id, found.session_last_response_id) == ("acct-a", "r1")
        assert found.source == "redis" and not found.degraded
        assert as_redis(a).pool.connection_kwargs["db"] == 2
        await a.aclose()
        await b.aclose()


async def test_a_dead_pooled_connection_is_redialled_within_the_same_op() -> None:
    """A restarted server (or a replaced primary) leaves dead connections in the pool: the
    op that meets one redials once inside its deadline instead of degrading."""
    server = RedisServer().start()
    hooks = RecordingHooks()
    store = open_store(
        server.url,
        key_prefix=unique_prefix("redial"),
        hooks=hooks,
        op_timeout_ms=ROUTING_TIMEOUT_MS,
    )
    try:
        assert (await store.bind_turn(binding("r1"))).ok  # one pooled connection now
        port = server.port
        server.stop()
        server = RedisServer(port=port).start()  # empty, same address
        outcome = await store.bind_turn(binding("r2"))
        assert outcome.ok and not outcome.degraded
        found = await store.lookup("g", response_id=None, session_key="sess-1")
        assert found.session_last_response_id == "r2" and not found.degraded
        assert hooks.bind_failures == [] and all(ok for _, ok in hooks.ops)
    finally:
        await store.aclose()
        server.stop()
