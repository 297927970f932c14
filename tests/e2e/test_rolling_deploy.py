"""Rolling deploys under store:false tool loops: instances restarted one after another
(SIGTERM, drain, start again) while conversations go on; real processes, real Redis,
nginx in front for the cluster case."""

from __future__ import annotations

import asyncio
import json
import signal
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.e2e.client import create, function_calls, open_ws, read_turn, response_id, user_message
from tests.e2e.cluster import run_cluster, wait_ready
from tests.e2e.harness import (
    GatewayProcess,
    SimProcess,
    auth_headers,
    gateway_config,
    run_gateway,
)
from tests.support import RedisServer, unique_prefix

pytestmark = pytest.mark.e2e

CALL = '[[sim call exec_command {"cmd":"echo ok"}]]'


def next_request(events: list[dict[str, Any]], step: int) -> str:
    """Answer the call of the previous turn and ask for another one."""
    call_id = function_calls(events)[0]["call_id"]
    answer = {"type": "function_call_output", "call_id": call_id, "output": "ok"}
    return create(
        previous_response_id=response_id(events),
        items=[answer, user_message(f"step {step} {CALL}")],
    )


class Instances:
    """Two gateway processes sharing one Redis; either can be restarted."""

    def __init__(self, stack: ExitStack, cfg: dict[str, object]) -> None:
        self.stack = stack
        self.cfg = cfg
        self.gateways = [self._start(i) for i in range(2)]

    def _start(self, index: int, port: int = 0) -> GatewayProcess:
        cfg = {**self.cfg, "server": {"instance_id": f"gw-{index}", "drain_timeout_s": 20.0}}
        gw = self.stack.enter_context(run_gateway(cfg, port=port))
        wait_ready(gw.http_url)
        return gw

    def restart(self, index: int) -> None:
        gw = self.gateways[index]
        assert gw.proc.proc is not None
        gw.proc.signal(signal.SIGTERM)
        assert gw.proc.proc.wait(timeout=30) == 0
        self.gateways[index] = self._start(index, port=gw.port)


@pytest.fixture
def instances(sim: SimProcess, redis_server: RedisServer) -> Iterator[Instances]:
    cfg = gateway_config(
        sim.base_url,
        overrides={
            "statestore": {"url": redis_server.url, "key_prefix": unique_prefix("roll") + ":"}
        },
    )
    with ExitStack() as stack:
        yield Instances(stack, cfg)


async def test_a_tool_loop_survives_restarts_of_the_instance_serving_it(
    sim: SimProcess, instances: Instances
) -> None:
    sim.control.reset()
    headers = auth_headers(session_id=f"sess-{uuid.uuid4().hex}")
    serving = 0
    ws = await open_ws(instances.gateways[serving].ws_url, headers)
    recovered: list[str] = []
    try:
        await ws.send(create(f"start the loop {CALL}"))
        events = await read_turn(ws)
        for step in range(1, 10):
            assert events[-1]["type"] == "response.completed", events[-1]
            if step in (3, 6):
                # The deploy restarts the instance serving this client; the client comes
                # back through the load balancer, on the other instance.
                await ws.close()
                instances.restart(serving)
                serving = 1 - serving
                ws = await open_ws(instances.gateways[serving].ws_url, headers)
            await ws.send(next_request(events, step))
            events = await read_turn(ws)
            assert [e for e in events if e["type"] == "error"] == []
            if step in (3, 6):
                recovered.append(response_id(events))
        assert events[-1]["type"] == "response.completed"
    finally:
        await ws.close()
    log = sim.control.log()
    for rid in recovered:
        request = log.by_response_id(rid)
        assert request is not None
        # The upstream got the whole conversation, rebuilt by the gateway, not a delta.
        assert request.previous_response_id is None
        assert "start the loop" in request.raw and "step 2" in request.raw


async def _connect(url: str, headers: dict[str, str]) -> ClientConnection:
    """Open a socket through the load balancer, retrying while it answers 502/503 or
    refuses (an instance is between stop and start), as Codex's reconnect does."""
    for attempt in range(100):
        try:
            return await open_ws(url, headers)
        except (InvalidStatus, OSError):
            await asyncio.sleep(min(0.5, 0.02 * (attempt + 1)))
    return await open_ws(url, headers)


async def _conversation(
    url: str, index: int, deployed: asyncio.Event, lost: list[str], replays: list[str]
) -> int:
    """A store:false tool loop that reconnects when its socket is closed (as an SDK with a
    reconnect policy does) and resends the request that did not get its answer."""
    headers = auth_headers(**{"session-id": f"conv-{index}-{uuid.uuid4().hex[:6]}"})
    ws: ClientConnection = await _connect(url, headers)
    request = create(f"conversation {index} {CALL}")
    done = after = 0
    try:
        while after < 3:  # keep going until the deploy is over, then a few more turns
            try:
                await ws.send(request)
                events = await read_turn(ws, timeout=60)
            except ConnectionClosed:
                ws = await _connect(url, headers)
                continue
            last = events[-1]
            if last["type"] == "error":
                code = last["error"]["code"]
                if code == "server_shutting_down":
                    ws = await _connect(url, headers)
                    continue
                (replays if code == "previous_response_not_found" else lost).append(code)
                return done
            done += 1
            after += deployed.is_set()
            request = next_request(events, done)
            await asyncio.sleep(0.05)  # a tool runs
    finally:
        await ws.close()
    return done


async def test_every_instance_restarted_once_behind_nginx_loses_nothing(sim: SimProcess) -> None:
    sim.control.reset()
    with run_cluster(sim.base_url, instances=3, accounts=1) as cluster:
        lost: list[str] = []
        replays: list[str] = []
        deployed = asyncio.Event()
        conversations = asyncio.gather(
            *(_conversation(cluster.ws_url, i, deployed, lost, replays) for i in range(20))
        )

        async def deploy() -> None:
            await asyncio.sleep(0.5)
            for index in range(3):
                await asyncio.to_thread(cluster.restart, index)
            deployed.set()

        async with asyncio.timeout(180):
            completed, _ = await asyncio.gather(conversations, deploy())
    assert (lost, replays) == ([], [])
    assert all(turns >= 3 for turns in completed)
    # Turns after a restart went out whole, rebuilt by the gateway from the durable
    # transcript: the upstream saw the conversation's first message and a later step.
    rebuilt = [
        r
        for r in sim.control.log().real_requests()
        if r.previous_response_id is None and "step" in r.raw
    ]
    assert rebuilt
    assert all(
        "conversation" in json.loads(r.raw)["input"][0]["content"][0]["text"] for r in rebuilt
    )
