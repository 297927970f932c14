"""The memory and Redis backends give the same answers to the same operations, TTL
included (Hypothesis stateful test).

Both backends run on one injected clock. Redis keeps real time, so "time passes" is
applied to Redis by shortening every key's PTTL by the same amount (deleting keys whose
TTL runs out): deterministic, and it checks that both backends put the same TTL on the
same records. The Redis store gets a tiny hot cache so backfills (and their TTL) are
exercised too. Real-time expiry is covered in test_redisstore.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import redis
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)

from statestore import BindOutcome, Continuation, StateStore, TurnBinding, open_store
from tests.statestore.support import FakeClock
from tests.support import RedisServer, unique_prefix

TTL_S = 10
GROUPS = st.sampled_from(["g", "h"])
RESPONSES = st.sampled_from(["r1", "r2", "r3", "r4"])
SESSIONS = st.sampled_from(["s1", "s2"])
ACCOUNTS = st.sampled_from(["a", "b", "c"])
CALLS = st.dictionaries(
    st.sampled_from(["c1", "c2", "c3"]),
    st.sampled_from(["function_call", "custom_tool_call", "local_shell_call"]),
    max_size=3,
)


def comparable(c: Continuation) -> tuple[Any, ...]:
    return (
        c.account_id,
        c.pending_calls,
        c.session_last_response_id,
        c.turn_state,
        c.degraded,
        c.source == "miss",
    )


class BackendsAgree(RuleBasedStateMachine):
    url = ""  # set by the test: the session redis-server
    bound = Bundle("bound")  # (group, response id) pairs bound so far: lookups revisit them

    def __init__(self) -> None:
        super().__init__()
        url = self.url
        self.loop = asyncio.new_event_loop()
        self.clock = FakeClock()
        self.prefix = unique_prefix("agree")
        self.memory = open_store("memory://", response_ttl_s=TTL_S, clock=self.clock)
        self.redis = open_store(
            url,
            key_prefix=self.prefix,
            response_ttl_s=TTL_S,
            clock=self.clock,
            cache_max_entries=1,  # every other response evicts: backfills galore
            op_timeout_ms=2000,  # generous: this test is about answers, not deadlines
        )
        self.raw = redis.Redis.from_url(url)

    def both(self, call: Callable[[StateStore], Awaitable[Any]]) -> tuple[Any, Any]:
        async def run() -> tuple[Any, Any]:
            return await call(self.memory), await call(self.redis)

        return self.loop.run_until_complete(run())

    @rule(
        target=bound,
        group=GROUPS,
        rid=RESPONSES,
        account=st.sampled_from(["a", "b"]),
        session=st.none() | SESSIONS,
        calls=CALLS,
        turn_state=st.none() | st.sampled_from(["ts-x", "ts-y"]),
    )
    def bind(
        self,
        group: str,
        rid: str,
        account: str,
        session: str | None,
        calls: dict[str, str],
        turn_state: str | None,
    ) -> tuple[str, str]:
        b = TurnBinding(
            group=group,
            account_id=account,
            response_id=rid,
            session_key=session,
            pending_calls=calls,
            turn_state=turn_state,
        )
        mem, red = self.both(lambda s: s.bind_turn(b))
        assert mem == red and red.ok
        return group, rid

    @rule(group=GROUPS, rid=st.none() | RESPONSES, session=st.none() | SESSIONS)
    def lookup(self, group: str, rid: str | None, session: str | None) -> None:
        self.compare_lookup(group, rid, session)

    @rule(pair=bound, session=st.none() | SESSIONS)
    def lookup_bound(self, pair: tuple[str, str], session: str | None) -> None:
        self.compare_lookup(pair[0], pair[1], session)

    def compare_lookup(self, group: str, rid: str | None, session: str | None) -> None:
        mem, red = self.both(lambda s: s.lookup(group, response_id=rid, session_key=session))
        assert comparable(mem) == comparable(red)

    @rule(group=GROUPS, rid=RESPONSES, session=SESSIONS)
    def single_lookups(self, group: str, rid: str, session: str) -> None:
        async def every(s: StateStore) -> tuple[Any, ...]:
            return (
                await s.get_response_account(group, rid),
                await s.get_pending_calls(group, rid),
                await s.get_session_last_response(group, session),
                await s.get_turn_state(group, session),
            )

        mem, red = self.both(every)
        assert mem == red

    @rule(group=GROUPS, rid=RESPONSES)
    def forget(self, group: str, rid: str) -> None:
        self.both(lambda s: s.forget_response(group, rid))

    @rule(
        group=GROUPS,
        account=ACCOUNTS,
        until=st.integers(min_value=1_700_000_000, max_value=1_700_000_100),
        ttl=st.integers(min_value=0, max_value=TTL_S),
    )
    def publish_cooldown(self, group: str, account: str, until: int, ttl: int) -> None:
        mem, red = self.both(lambda s: s.publish_cooldown(group, account, until + 0.5, ttl))
        assert mem == red is True

    @rule(group=GROUPS, accounts=st.lists(ACCOUNTS, max_size=3))
    def read_cooldowns(self, group: str, accounts: list[str]) -> None:
        mem, red = self.both(lambda s: s.read_cooldowns(group, accounts))
        assert mem == red

    @rule(seconds=st.integers(min_value=1, max_value=TTL_S + 1))
    def time_passes(self, seconds: int) -> None:
        self.clock.advance(seconds)
        for key in self.raw.scan_iter(f"{self.prefix}:*"):
            left = int(self.raw.pttl(key)) - seconds * 1000
            if left <= 0:
                self.raw.delete(key)
            else:
                self.raw.pexpire(key, left)

    @invariant()
    def redis_ttls_never_exceed_the_binding_ttl(self) -> None:
        for key in self.raw.scan_iter(f"{self.prefix}:*"):
            assert 0 < int(self.raw.pttl(key)) <= TTL_S * 1000

    def teardown(self) -> None:
        self.loop.run_until_complete(self.redis.aclose())
        self.loop.close()
        self.raw.close()


def test_memory_and_redis_backends_agree(redis_server: RedisServer) -> None:
    class OnThisServer(BackendsAgree):
        url = redis_server.url

    run_state_machine_as_test(
        OnThisServer,
        settings=settings(max_examples=40, stateful_step_count=25, deadline=None),
    )


async def test_only_the_in_process_store_binds_without_awaiting(
    redis_server: RedisServer, key_prefix: str
) -> None:
    """memory:// completes a bind on the spot (the caller needs no task for it); Redis
    always says to await its write."""
    binding = TurnBinding(group="g", account_id="a", response_id="resp_1", session_key="s")
    memory = open_store("memory://")
    assert memory.bind_turn_nowait(binding) == BindOutcome(ok=True)
    assert (await memory.lookup("g", response_id="resp_1", session_key="s")).account_id == "a"
    redis = open_store(redis_server.url, key_prefix=key_prefix)
    try:
        assert redis.bind_turn_nowait(binding) is None
    finally:
        await redis.aclose()
