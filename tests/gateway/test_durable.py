"""The durable transcript written once more when a socket closes: a last turn whose write
failed leaves the stored chain complete, bounded in tries and time, never under another
instance that took the session over, and nothing extra when every write landed."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from typing import Any, cast

import msgspec
import pytest

from gateway.forward.binder import Retry
from gateway.forward.ctx_pool import CtxPoolForwarder
from statestore import (
    BindOutcome,
    Continuation,
    StateStore,
    TranscriptDelta,
    TurnBinding,
    chain_items,
    open_store,
)
from tests.gateway.test_ctx_pool import Rig, config, create, rid, rig_factory, types, user
from tests.support import FakeClock, RedisServer

__all__ = ["rig_factory"]  # the fixture, imported for this module's tests

GROUP, SESSION = "default", "sess-close"
DURABLE: dict[str, object] = {"durable_transcripts": True}


class FlakyStore:
    """An in-process store written the way Redis is (always awaited) whose next
    ``fail_binds`` binds fail: their local part is kept and their transcript delta is not,
    as a Redis store keeps it. Fails at once; ``bind_cost_s`` moves ``clock`` per bind."""

    def __init__(self, inner: StateStore, clock: FakeClock, bind_cost_s: float = 0.0) -> None:
        self.inner = inner
        self.clock = clock
        self.bind_cost_s = bind_cost_s
        self.fail_binds = 0
        self.unreachable = False  # lookups answer degraded, as with a frozen Redis
        self.binds: list[tuple[str, str]] = []  # (response id, "whole" | "append" | "none")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def bind_turn_nowait(self, binding: TurnBinding) -> None:
        return None

    async def bind_turn(self, binding: TurnBinding) -> BindOutcome:
        delta = binding.transcript
        kind = "none" if delta is None else "append" if delta.previous_response_id else "whole"
        self.binds.append((binding.response_id, kind))
        self.clock.advance(self.bind_cost_s)
        if self.fail_binds:
            self.fail_binds -= 1
            local = msgspec.structs.replace(binding, transcript=None, drop_transcript=False)
            await self.inner.bind_turn(local)
            return BindOutcome(ok=False, degraded=True, error="TimeoutError")
        return await self.inner.bind_turn(binding)

    async def lookup(
        self, group: str, *, response_id: str | None, session_key: str | None
    ) -> Continuation:
        found = await self.inner.lookup(group, response_id=response_id, session_key=session_key)
        return msgspec.structs.replace(found, degraded=True) if self.unreachable else found


class Close:
    """A forwarder on a FlakyStore, its close retry on a fake clock (backoffs recorded)."""

    def __init__(self, rig: Rig, bind_cost_s: float = 0.0) -> None:
        self.clock = FakeClock()
        self.store = FlakyStore(rig.ctx.store, self.clock, bind_cost_s)
        rig.ctx.store = cast(StateStore, self.store)
        self.rig = rig
        self.fwd, self.sink = rig.forwarder(session_key=SESSION)
        self.slept: list[float] = []
        retry = self.fwd.durable.close_retry
        self.fwd.durable.close_retry = Retry(
            retry.attempts, retry.backoff_s, retry.budget_s, clock=self.clock, sleep=self.sleep
        )

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.clock.advance(seconds)

    async def turn(self, text: str, previous: str | None = None) -> str:
        """One turn; its binding written (or failed) before it returns."""
        await self.fwd.run_turn(create([user(text)], previous_response_id=previous), self.sink)
        frames = Rig.client(self.sink).turn()
        assert types(frames)[-1] == "response.completed"
        await self.fwd.binder.flush()
        return rid(frames)

    async def two_turns(self, fail_binds: int) -> tuple[str, str]:
        """A first turn written whole, then a second whose append meets ``fail_binds``
        failing binds; the two response ids."""
        first = await self.turn("remember 7")
        self.store.fail_binds = fail_binds
        return first, await self.turn("and 8", previous=first)

    async def chain(self, ends_with: str) -> list[str] | None:
        deltas = await self.store.inner.load_transcript(GROUP, SESSION)
        items = chain_items(deltas or [], ends_with)
        return None if items is None else [json.dumps(msgspec.json.decode(i)) for i in items]


def texts(items: list[str]) -> str:
    return " ".join(items)


async def test_a_last_turn_whose_write_failed_is_written_whole_on_close(
    rig_factory: Callable[..., Rig], caplog: pytest.LogCaptureFixture
) -> None:
    rig = rig_factory(config(statestore=DURABLE))
    c = Close(rig)
    first, second = await c.two_turns(1)
    assert await c.chain(second) is None  # one turn short: what another instance would see
    with caplog.at_level(logging.INFO, logger="gateway.durable"):
        await c.fwd.aclose()
    assert c.store.binds == [(first, "whole"), (second, "append"), (second, "whole")]
    items = await c.chain(second)
    assert items is not None
    assert "remember 7" in texts(items) and "and 8" in texts(items)
    [record] = caplog.records
    assert record.__dict__["event"] == "durable_written_on_close"
    assert record.__dict__["response_id"] == second
    assert c.slept == []
    # The client comes back on another socket whose upstream lost the conversation.
    for sock in rig.upstream.sockets:
        sock.last = None
    again, sink = rig.forwarder(session_key=SESSION)
    await again.run_turn(create([user("which?")], previous_response_id=second), sink)
    assert types(Rig.client(sink).turn())[-1] == "response.completed"
    sent = rig.upstream.requests[-1]
    assert "previous_response_id" not in sent and "remember 7" in json.dumps(sent["input"])


async def test_a_write_that_keeps_failing_gives_up_after_its_tries_with_one_warning(
    rig_factory: Callable[..., Rig], caplog: pytest.LogCaptureFixture
) -> None:
    c = Close(rig_factory(config(statestore=DURABLE)))
    _first, second = await c.two_turns(100)
    with caplog.at_level(logging.INFO):
        await c.fwd.aclose()
    assert c.store.binds[1:] == [(second, "append")] + [(second, "whole")] * 3
    assert c.slept == [0.05, 0.1]
    assert await c.chain(second) is None
    [record] = [r for r in caplog.records if r.name == "gateway.durable"]
    assert record.levelno == logging.WARNING and record.exc_info is None
    assert record.__dict__["event"] == "durable_lost_on_close"
    assert record.__dict__["error"] == "TimeoutError"
    assert all(r.exc_info is None for r in caplog.records)
    assert c.fwd.transcript.items is None  # the socket's transcript was released


async def test_no_try_starts_past_the_budget(rig_factory: Callable[..., Rig]) -> None:
    # Each bind takes 0.45 s of the 1 s budget: the second try ends at 0.95 s, and the
    # third would start after a 0.1 s backoff, past the budget.
    c = Close(rig_factory(config(statestore=DURABLE)), bind_cost_s=0.45)
    assert c.fwd.durable.close_retry.budget_s == 1.0
    _first, second = await c.two_turns(100)
    await c.fwd.aclose()
    assert c.store.binds[2:] == [(second, "whole")] * 2
    assert c.slept == [0.05]


async def test_a_store_that_does_not_answer_spends_the_tries_without_writing(
    rig_factory: Callable[..., Rig], caplog: pytest.LogCaptureFixture
) -> None:
    c = Close(rig_factory(config(statestore=DURABLE)))
    first, second = await c.two_turns(1)
    c.store.unreachable = True
    with caplog.at_level(logging.WARNING, logger="gateway.durable"):
        await c.fwd.aclose()
    assert c.store.binds == [(first, "whole"), (second, "append")]
    assert c.slept == [0.05, 0.1]
    [record] = caplog.records
    assert record.__dict__["error"] == "the store did not answer"


async def test_a_session_another_instance_took_over_is_left_alone(
    rig_factory: Callable[..., Rig], caplog: pytest.LogCaptureFixture
) -> None:
    c = Close(rig_factory(config(statestore=DURABLE)))
    _first, second = await c.two_turns(1)
    # The client came back elsewhere and started over: that instance's chain is newer.
    theirs = TranscriptDelta(None, "resp_elsewhere", [msgspec.Raw(b'{"type":"message"}')])
    other = TurnBinding(
        group=GROUP,
        account_id="acct-0",
        response_id="resp_elsewhere",
        session_key=SESSION,
        transcript=theirs,
    )
    assert (await c.store.inner.bind_turn(other)).ok
    with caplog.at_level(logging.INFO, logger="gateway.durable"):
        await c.fwd.aclose()
    assert c.store.binds[-1] == (second, "append")  # nothing written on close
    assert await c.chain("resp_elsewhere") == ['{"type": "message"}']
    [record] = caplog.records
    assert record.levelno == logging.INFO
    assert record.__dict__["event"] == "durable_superseded_on_close"


async def test_nothing_is_written_on_close_when_the_chain_is_whole(
    rig_factory: Callable[..., Rig],
) -> None:
    c = Close(rig_factory(config(statestore=DURABLE)))
    first, second = await c.two_turns(1)  # failed: the next turn rewrites it all
    third = await c.turn("and 9", previous=second)
    await c.fwd.aclose()
    assert c.store.binds == [(first, "whole"), (second, "append"), (third, "whole")]
    items = await c.chain(third)
    assert items is not None and "and 8" in texts(items)


async def test_without_durable_transcripts_close_writes_nothing(
    rig_factory: Callable[..., Rig],
) -> None:
    c = Close(rig_factory(config(statestore={"durable_transcripts": False})))
    first, second = await c.two_turns(1)
    await c.fwd.aclose()
    assert c.store.binds == [(first, "none"), (second, "none")]


@pytest.fixture(scope="module")
def own_redis() -> Iterator[RedisServer]:
    server = RedisServer().start()  # paused and restarted below: not the shared server
    try:
        yield server
    finally:
        server.stop()


async def _cut_off_by_a_frozen_redis(
    rig: Rig, redis: RedisServer, then: Callable[[], None]
) -> tuple[CtxPoolForwarder, str]:
    """Two turns; the second's binding times out against a SIGSTOPped Redis, then
    ``then()`` brings Redis back. Returns the forwarder, still open, and the last id."""
    fwd, sink = rig.forwarder(session_key=SESSION)
    await fwd.run_turn(create([user("remember 7")]), sink)
    first = rid(Rig.client(sink).turn())
    await fwd.binder.flush()
    redis.pause()
    try:
        await fwd.run_turn(create([user("and 8")], previous_response_id=first), sink)
        second = rid(Rig.client(sink).turn())
        await fwd.binder.flush()  # the store's own deadline ends the write
        assert fwd.durable.resync  # the write was seen to fail
    finally:
        then()
    return fwd, second


async def _assert_whole_chain(redis: RedisServer, prefix: str, last: str) -> None:
    reader = open_store(redis.url, key_prefix=prefix)
    try:
        items = chain_items(await reader.load_transcript(GROUP, SESSION) or [], last)
        assert items is not None
        text = texts([bytes(i).decode() for i in items])
        assert "remember 7" in text and "and 8" in text
        assert await reader.get_response_account(GROUP, last) == "acct-0"
        assert await reader.get_session_last_response(GROUP, SESSION) == last
    finally:
        await reader.aclose()


def _redis_config(redis: RedisServer, prefix: str) -> dict[str, object]:
    return {"url": redis.url, "key_prefix": prefix, "durable_transcripts": True}


async def test_a_bind_cut_off_by_a_frozen_redis_is_made_good_when_the_socket_closes(
    rig_factory: Callable[..., Rig], own_redis: RedisServer, key_prefix: str
) -> None:
    rig = rig_factory(config(statestore=_redis_config(own_redis, key_prefix)))
    fwd, last = await _cut_off_by_a_frozen_redis(rig, own_redis, own_redis.resume)
    await fwd.aclose()
    await _assert_whole_chain(own_redis, key_prefix, last)


async def test_a_redis_that_froze_and_came_back_empty_gets_the_whole_conversation(
    rig_factory: Callable[..., Rig], own_redis: RedisServer, key_prefix: str
) -> None:
    # A restarted Redis lost every earlier write too (and the cut-off one, still unread in
    # its socket): only the write on close can leave the conversation behind.
    def restart() -> None:
        own_redis.stop()
        own_redis.start()

    rig = rig_factory(config(statestore=_redis_config(own_redis, key_prefix)))
    fwd, last = await _cut_off_by_a_frozen_redis(rig, own_redis, restart)
    await fwd.aclose()
    await _assert_whole_chain(own_redis, key_prefix, last)
