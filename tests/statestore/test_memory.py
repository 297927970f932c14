"""The memory:// backend: bounded, TTL'd on an injected clock, nothing degraded."""

from __future__ import annotations

from statestore import open_store
from tests.statestore.support import PENDING, FakeClock, RecordingHooks, binding


async def test_lookup_answers_everything_a_turn_needs() -> None:
    hooks = RecordingHooks()
    store = open_store("memory://", hooks=hooks)
    assert (await store.bind_turn(binding("r1"))).ok
    found = await store.lookup("g", response_id="r1", session_key="sess-1")
    assert (found.account_id, found.pending_calls) == ("acct-a", PENDING)
    assert (found.session_last_response_id, found.turn_state) == ("r1", "ts-1")
    assert found.conn_id == "gw:acct-a:1" and store.get_conn_id("r1") == "gw:acct-a:1"
    assert found.source == "cache" and not found.degraded
    missing = await store.lookup("g", response_id="nope", session_key=None)
    assert missing.account_id is None and missing.pending_calls is None
    assert missing.source == "miss"
    assert hooks.cache == [True, False]


async def test_single_lookups_and_group_isolation() -> None:
    store = open_store("memory://")
    await store.bind_turn(binding("r1", pending_calls={}))
    assert await store.get_response_account("g", "r1") == "acct-a"
    assert await store.get_pending_calls("g", "r1") == {}  # known: nothing pending
    assert await store.get_session_last_response("g", "sess-1") == "r1"
    assert await store.get_turn_state("g", "sess-1") == "ts-1"
    assert await store.get_response_account("g2", "r1") is None
    assert await store.get_session_last_response("g2", "sess-1") is None


async def test_returned_pending_calls_are_the_callers_copy() -> None:
    store = open_store("memory://")
    await store.bind_turn(binding("r1"))
    got = await store.get_pending_calls("g", "r1")
    assert got is not None
    got.clear()
    assert await store.get_pending_calls("g", "r1") == PENDING


async def test_everything_expires_with_the_ttl_on_the_injected_clock() -> None:
    clock = FakeClock()
    store = open_store("memory://", response_ttl_s=10, clock=clock)
    await store.bind_turn(binding("r1"))
    clock.advance(9.5)
    assert await store.get_response_account("g", "r1") == "acct-a"
    clock.advance(0.5)
    found = await store.lookup("g", response_id="r1", session_key="sess-1")
    assert found.account_id is None and found.pending_calls is None
    assert found.session_last_response_id is None and found.turn_state is None
    assert store.get_conn_id("r1") is None
    assert found.source == "miss"


async def test_bounded_by_cache_max_entries() -> None:
    store = open_store("memory://", cache_max_entries=2)
    for rid in ("r1", "r2", "r3"):
        await store.bind_turn(binding(rid, session_key=None))
    assert await store.get_response_account("g", "r1") is None  # least recently used
    assert await store.get_response_account("g", "r3") == "acct-a"


async def test_forget_and_lifecycle() -> None:
    store = open_store("memory://")
    await store.start()
    await store.bind_turn(binding("r1"))
    await store.forget_response("g", "r1")
    assert await store.get_pending_calls("g", "r1") is None
    assert store.get_conn_id("r1") is None
    assert await store.ping() is True
    await store.aclose()
