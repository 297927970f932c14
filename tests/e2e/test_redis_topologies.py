"""Two gateway processes sharing a Redis Cluster or a Sentinel-managed Redis: continuation
across instances with pending calls, back-to-back turns, and a primary killed mid-run.
Real redis-server/sentinel processes, real gateways, the simulator."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection

from statestore import StateStore, open_store
from statestore.keys import RedisKeys
from tests.e2e.client import (
    create,
    function_calls,
    open_ws,
    response_id,
    terminal,
    turn,
    user_message,
)
from tests.e2e.cluster import wait_ready
from tests.e2e.harness import GatewayProcess, SimProcess, auth_headers, gateway_config, run_gateway
from tests.support import unique_prefix
from tests.support.redis_topologies import (
    RedisClusterSetup,
    SentinelSetup,
    run_redis_cluster,
    run_sentinel,
)

pytestmark = pytest.mark.e2e
CALL = '[[sim call exec_command {"cmd":"echo ok"}]]'
TURN_BOUND_S = 5.0  # a turn during a failover completes well within this
GROUP = "default"


@dataclass
class Shared:
    """Two gateways on one Redis topology, and a reader of the shared store."""

    setup: RedisClusterSetup | SentinelSetup
    gateways: tuple[GatewayProcess, GatewayProcess]
    prefix: str

    def reader(self) -> StateStore:
        return open_store(self.setup.url, key_prefix=self.prefix)

    def logs(self) -> str:
        return "\n".join(gw.proc.output() for gw in self.gateways)


@contextmanager
def shared_store(sim: SimProcess, kind: str, accounts: int = 2) -> Iterator[Shared]:
    with ExitStack() as stack:
        setup: RedisClusterSetup | SentinelSetup = stack.enter_context(
            run_redis_cluster() if kind == "cluster" else run_sentinel()
        )
        prefix = unique_prefix(kind)
        configs = [
            gateway_config(
                sim.base_url,
                accounts=accounts,
                instance_id=f"gw-{i}",
                overrides={"statestore": {"url": setup.url, "key_prefix": prefix}},
            )
            for i in (1, 2)
        ]
        # The second instance lists the accounts the other way round: without the shared
        # binding its pick would be the other account, so the account proves the lookup.
        accounts = configs[1]["accounts"]
        assert isinstance(accounts, list)
        configs[1]["accounts"] = list(reversed(accounts))
        gateways = tuple(stack.enter_context(run_gateway(cfg)) for cfg in configs)
        for gw in gateways:
            wait_ready(gw.http_url)
        yield Shared(setup, (gateways[0], gateways[1]), prefix)


@pytest.fixture(params=["cluster", "sentinel"])
def shared(request: pytest.FixtureRequest, sim: SimProcess) -> Iterator[Shared]:
    sim.control.reset()
    with shared_store(sim, request.param) as s:
        yield s


@pytest.fixture(params=["cluster", "sentinel"])
def shared_one_account(request: pytest.FixtureRequest, sim: SimProcess) -> Iterator[Shared]:
    sim.control.reset()
    with shared_store(sim, request.param, accounts=1) as s:
        yield s


def ws_requests(sim: SimProcess) -> list[dict[str, Any]]:
    log = sim.control.log()
    return [r for r in log["requests"] if r["transport"] == "ws" and r.get("generate") is not False]


async def wait_bound(shared: Shared, rid: str, pending: dict[str, str]) -> None:
    """Poll (a fresh reader each time: no cache) until the shared store holds ``rid``."""
    deadline = time.monotonic() + 30
    while True:
        reader = shared.reader()
        try:
            if await reader.get_pending_calls(GROUP, rid) == pending:
                return
        finally:
            await reader.aclose()
        assert time.monotonic() < deadline, f"{rid} never reached the shared store"
        await asyncio.sleep(0.05)


async def connect(gw: GatewayProcess, session: str) -> ClientConnection:
    return await open_ws(gw.ws_url, auth_headers(**{"session-id": session}))


async def continue_elsewhere_skipping_the_call(
    sim: SimProcess, gw: GatewayProcess, first: list[dict[str, Any]]
) -> None:
    """A second instance continues ``first`` without answering its call: it must have
    read the pending call and the account from the shared store."""
    call_id = function_calls(first)[0]["call_id"]
    ws = await connect(gw, unique_prefix("other"))
    try:
        payload = create(
            previous_response_id=response_id(first), items=[user_message("skip")], store=True
        )
        second = await turn(ws, payload)
    finally:
        await ws.close()
    assert terminal(second)["type"] == "response.completed"
    reqs = ws_requests(sim)
    origin = next(r for r in reqs if r["response_id"] == response_id(first))
    follow = next(r for r in reversed(reqs) if r["response_id"] == response_id(second))
    assert follow["previous_response_id"] == response_id(first)
    injected = {"type": "function_call_output", "call_id": call_id, "output": "aborted"}
    assert injected in json.loads(follow["raw"])["input"]
    assert follow["account_key"] == origin["account_key"]


def assert_no_redirections(shared: Shared) -> None:
    logs = shared.logs()
    assert "MOVED" not in logs and "CROSSSLOT" not in logs and "ASK " not in logs


async def test_continuation_with_pending_calls_across_instances(
    sim: SimProcess, shared: Shared
) -> None:
    a, b = shared.gateways
    for n in range(4):  # different sessions land on different slots (and primaries)
        ws = await connect(a, unique_prefix(f"s{n}"))
        try:
            first = await turn(ws, create(f"run it {CALL}", store=True))
        finally:
            await ws.close()
        call_id = function_calls(first)[0]["call_id"]
        await wait_bound(shared, response_id(first), {call_id: "function_call"})
        await continue_elsewhere_skipping_the_call(sim, b, first)
    assert_no_redirections(shared)


async def test_back_to_back_turns_sent_the_instant_the_terminal_arrives(
    sim: SimProcess, shared_one_account: Shared
) -> None:
    """A tool loop that alternates instances, each turn sent the moment the previous
    terminal arrives. The gateway writes a binding after it relays the terminal, so the
    other instance may not see it yet; with one account that costs nothing, and every
    turn must complete with its tool output."""
    shared = shared_one_account
    session = unique_prefix("b2b")
    sockets = [await connect(gw, session) for gw in shared.gateways]
    try:
        previous: str | None = None
        call_id = ""
        for n in range(8):
            ws = sockets[n % 2]
            fields: dict[str, Any] = {"store": True}
            if previous:
                fields["previous_response_id"] = previous
            if n % 2 == 0:
                payload = create(items=[user_message(f"step {n} {CALL}")], **fields)
            else:
                output = {"type": "function_call_output", "call_id": call_id, "output": f"ok{n}"}
                payload = create(items=[output], **fields)
            events = await turn(ws, payload)
            assert [e for e in events if e["type"] == "error"] == []
            assert terminal(events)["type"] == "response.completed"
            if n % 2 == 0:
                call_id = function_calls(events)[0]["call_id"]
            else:
                assert f"tool said: ok{n}" in json.dumps(events[-1])
            previous = response_id(events)
    finally:
        for ws in sockets:
            await ws.close()
    assert_no_redirections(shared)


def kill_session_primary(shared: Shared, session: str) -> int:
    """SIGKILL the primary that holds ``session``'s keys; returns its port."""
    setup = shared.setup
    if isinstance(setup, RedisClusterSetup):
        port = setup.primary_port_for(RedisKeys(shared.prefix).session(GROUP, session)[0])
        setup.node(port).kill()
        return port
    return setup.kill_primary().port


def wait_promoted(shared: Shared, session: str, dead: int) -> None:
    setup = shared.setup
    if isinstance(setup, RedisClusterSetup):
        setup.wait_promoted(RedisKeys(shared.prefix).session(GROUP, session)[0], dead)
    else:
        setup.wait_failover(dead)


async def bounded_turn(ws: ClientConnection, payload: str) -> list[dict[str, Any]]:
    events = await turn(ws, payload, timeout=TURN_BOUND_S)
    assert terminal(events)["type"] == "response.completed", terminal(events)
    return events


async def turn_on(gw: GatewayProcess, session: str, payload: str) -> list[dict[str, Any]]:
    """One turn on a fresh socket: its continuation state comes from the store."""
    ws = await connect(gw, session)
    try:
        return await bounded_turn(ws, payload)
    finally:
        await ws.close()


async def test_primary_killed_mid_run(sim: SimProcess, shared: Shared) -> None:
    a, b = shared.gateways
    session = unique_prefix("failover")
    warm = await turn_on(a, session, create(f"run it {CALL}", store=True))
    call_id = function_calls(warm)[0]["call_id"]
    await wait_bound(shared, response_id(warm), {call_id: "function_call"})
    dead = kill_session_primary(shared, session)
    # Turns keep completing while the primary is gone (instance a answers from its hot
    # cache); their binds fail and wait for the write-back.
    output = {"type": "function_call_output", "call_id": call_id, "output": "done"}
    answered = await turn_on(
        a, session, create(items=[output], previous_response_id=response_id(warm), store=True)
    )
    assert "tool said: done" in json.dumps(answered[-1])
    stranded = await turn_on(
        a,
        session,
        create(
            items=[user_message(f"again {CALL}")],
            previous_response_id=response_id(answered),
            store=True,
        ),
    )
    # The other instance's new conversations complete too (their binds fail and wait).
    # Continuing a response it never saw would need the account from Redis: during the
    # outage that is the upstream's "previous response not found", as without any store.
    await turn_on(b, unique_prefix("during"), create("a new conversation", store=True))
    stranded_id = response_id(stranded)
    failed_lines = [
        line for line in a.proc.output().splitlines() if "bind" in line and stranded_id in line
    ]
    assert failed_lines, "the bind during the outage did not fail: the kill came too late"
    await asyncio.to_thread(wait_promoted, shared, session, dead)
    # The next turn that binds on instance a writes the failed binding back.
    stranded_call = function_calls(stranded)[0]["call_id"]
    deadline = time.monotonic() + 30
    while True:
        await turn_on(a, unique_prefix("after"), create("after the failover"))
        reader = shared.reader()
        try:
            held = await reader.get_pending_calls(GROUP, stranded_id)
        finally:
            await reader.aclose()
        if held == {stranded_call: "function_call"}:
            break
        assert time.monotonic() < deadline, "the failed bind was never written back"
        await asyncio.sleep(0.1)
    # The continuation resumes on the new primary, from the other instance.
    await continue_elsewhere_skipping_the_call(sim, b, stranded)
    assert_no_redirections(shared)
