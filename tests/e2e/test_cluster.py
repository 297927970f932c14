"""Several instances behind the shipped nginx config with one Redis: a conversation hops
instances, and an instance stopped (SIGTERM) or killed (SIGKILL) loses no conversation.
Real gateway processes, real nginx, real redis-server, the simulator."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection

from tests.e2e.client import (
    create,
    function_calls,
    open_ws,
    read_turn,
    response_id,
    terminal,
    turn,
    user_message,
)
from tests.e2e.cluster import Cluster, run_cluster
from tests.e2e.harness import SimProcess, auth_headers
from tests.support import unique_prefix

pytestmark = pytest.mark.e2e
CALL = '[[sim call exec_command {"cmd":"echo ok"}]]'


@pytest.fixture
def cluster(sim: SimProcess) -> Iterator[Cluster]:
    sim.control.reset()
    with run_cluster(sim.base_url, instances=3) as c:
        yield c


async def connect(cluster: Cluster, session: str) -> tuple[ClientConnection, str]:
    ws = await open_ws(cluster.ws_url, auth_headers(**{"session-id": session}))
    assert ws.response is not None
    return ws, ws.response.headers["x-gateway-instance"]


async def one_turn(
    cluster: Cluster, session: str, payload: str
) -> tuple[list[dict[str, Any]], str]:
    ws, instance = await connect(cluster, session)
    try:
        return await turn(ws, payload), instance
    finally:
        await ws.close()


async def test_ten_turn_tool_conversation_hops_instances(cluster: Cluster) -> None:
    previous: str | None = None
    call_id = ""
    seen: set[str] = set()
    for n in range(10):
        session = unique_prefix(f"turn{n}")  # a new session header per turn moves the turn
        fields: dict[str, Any] = {"store": True}
        if previous:
            fields["previous_response_id"] = previous
        if n % 2 == 0:
            payload = create(items=[user_message(f"step {n} {CALL}")], **fields)
        else:
            payload = create(
                items=[{"type": "function_call_output", "call_id": call_id, "output": f"ok{n}"}],
                **fields,
            )
        events, instance = await one_turn(cluster, session, payload)
        seen.add(instance)
        assert [e for e in events if e["type"] == "error"] == []
        assert terminal(events)["type"] == "response.completed"
        if n % 2 == 0:
            call_id = function_calls(events)[0]["call_id"]
        else:
            assert f"tool said: ok{n}" in json.dumps(events[-1])
        previous = response_id(events)
    assert len(seen) >= 2, f"turns never left one instance: {seen}"


async def test_session_header_spellings_land_on_the_same_instance(cluster: Cluster) -> None:
    async with httpx.AsyncClient(base_url=cluster.nginx_url) as client:
        for n in range(5):
            key = unique_prefix(f"s{n}")
            hyphen = await client.get("/healthz", headers={"session-id": key})
            underscore = await client.get("/healthz", headers={"session_id": key})
            assert hyphen.headers["x-gateway-instance"] == underscore.headers["x-gateway-instance"]
        spread = {
            (await client.get("/healthz", headers={"session-id": unique_prefix("x")})).headers[
                "x-gateway-instance"
            ]
            for _ in range(20)
        }
    assert len(spread) >= 2  # different sessions do spread


async def test_sigterm_mid_turn_finishes_the_turn_and_moves_new_sockets(cluster: Cluster) -> None:
    ws, instance = await connect(cluster, unique_prefix("drain"))
    await ws.send(create("long [[sim deltas=200 delay_ms=5]]"))
    first = json.loads(await ws.recv())
    assert first["type"] == "response.created"
    cluster.kill(cluster.index_of(instance), signal.SIGTERM)
    events = [first, *await read_turn(ws, timeout=30)]
    await ws.close()
    assert terminal(events)["type"] == "response.completed"
    assert len([e for e in events if e["type"] == "response.output_text.delta"]) == 200
    for n in range(6):
        other, landed = await connect(cluster, unique_prefix(f"after{n}"))
        try:
            assert landed != instance
            assert (
                terminal(await turn(other, create("after the drain")))["type"]
                == "response.completed"
            )
        finally:
            await other.close()


async def test_sigkill_between_turns_store_true_continues_elsewhere(cluster: Cluster) -> None:
    session = unique_prefix("kill-stored")
    first, instance = await one_turn(cluster, session, create("remember KIWI", store=True))
    cluster.kill(cluster.index_of(instance), signal.SIGKILL)
    second, landed = await one_turn(
        cluster,
        session,
        create(
            previous_response_id=response_id(first), items=[user_message("what fruit?")], store=True
        ),
    )
    assert landed != instance
    assert terminal(second)["type"] == "response.completed"


async def test_sigkill_between_turns_store_false_recovers_by_full_replay(cluster: Cluster) -> None:
    session = unique_prefix("kill-ephemeral")
    history = [user_message("remember MANGO")]
    first, instance = await one_turn(cluster, session, create(items=history))
    cluster.kill(cluster.index_of(instance), signal.SIGKILL)
    ws, landed = await connect(cluster, session)
    try:
        assert landed != instance
        second = await turn(
            ws,
            create(previous_response_id=response_id(first), items=[user_message("which fruit?")]),
        )
        if terminal(second)["type"] == "error":
            # The new instance has neither the upstream socket nor a transcript: it asks
            # for the full history, which Codex then resends on a new socket.
            assert terminal(second)["error"]["code"] == "previous_response_not_found"
            output = first[-1]["response"]["output"]
            second = await turn(ws, create(items=[*history, *output, user_message("which fruit?")]))
        assert terminal(second)["type"] == "response.completed"
    finally:
        await ws.close()
