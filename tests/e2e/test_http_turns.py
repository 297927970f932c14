"""POST /v1/responses as a first-class turn: real gateway processes, the simulator, a
real redis-server shared by two instances."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.client import create, open_ws, read_turn, user_message
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


@pytest.fixture(scope="module")
def gateway(sim: SimProcess) -> Iterator[GatewayProcess]:
    with run_gateway(gateway_config(sim.base_url)) as gw:
        yield gw


def sse_events(body: bytes) -> list[dict[str, Any]]:
    return [
        json.loads(line[5:])
        for line in body.decode().splitlines()
        if line.startswith("data:") and line[5:].strip() != "[DONE]"
    ]


async def post(gw: GatewayProcess, **body: Any) -> httpx.Response:
    payload: dict[str, Any] = {"model": "gpt-test", **body}
    async with httpx.AsyncClient(base_url=gw.http_url, timeout=30) as client:
        return await client.post("/v1/responses", json=payload, headers=auth_headers())


async def metric(gw: GatewayProcess, name: str, **labels: str) -> float:
    async with httpx.AsyncClient(base_url=gw.http_url) as client:
        text = (await client.get("/metrics")).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items())
    )


@pytest.mark.parametrize("stream", [True, False])
async def test_http_turns_get_the_same_repairs_as_websocket_turns(
    sim: SimProcess, gateway: GatewayProcess, stream: bool
) -> None:
    sim.control.reset()
    before = await metric(gateway, "gateway_normalizer_decisions_total", state="repaired")
    orphan = {"type": "function_call_output", "call_id": "call_orphan", "output": "stale"}
    response = await post(gateway, stream=stream, input=[orphan, user_message("hello")])
    assert response.status_code == 200
    if stream:
        assert sse_events(response.content)[-1]["type"] == "response.completed"
    else:
        assert response.json()["status"] == "completed"
    sent = sim.control.log().http_requests()[-1]
    assert "call_orphan" not in sent.raw

    call = {"type": "function_call", "call_id": "call_open", "name": "exec", "arguments": "{}"}
    response = await post(
        gateway, stream=stream, input=[user_message("run"), call, user_message("x")]
    )
    assert response.status_code == 200
    sent_items = json.loads(sim.control.log().http_requests()[-1].raw)["input"]
    answer = {"type": "function_call_output", "call_id": "call_open", "output": "aborted"}
    assert sent_items[2] == answer
    after = await metric(gateway, "gateway_normalizer_decisions_total", state="repaired")
    assert after - before == 2


async def test_refused_posts_are_retried_and_all_refused_is_one_clear_error(
    sim: SimProcess, gateway: GatewayProcess
) -> None:
    sim.control.reset()
    sim.control.add_fault(kind="http_status", status=503, times=1)
    response = await post(gateway, stream=True, input=[user_message("once more")])
    assert response.status_code == 200
    assert sse_events(response.content)[-1]["type"] == "response.completed"
    sim.control.add_fault(kind="http_status", status=503, times=50)
    refused = await post(gateway, stream=True, input=[user_message("never")])
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "upstream_unavailable"
    assert len(sim.control.log().http_requests()) < 1 + 50  # bounded by the retry budget
    sim.control.clear_faults()


async def test_http_turns_then_continuations_on_another_instance_land_on_the_owner(
    sim: SimProcess, redis_server: RedisServer
) -> None:
    """Turn 1 over HTTP (store: true) on instance 1; turn 2 continues it on instance 2,
    half over HTTP and half over WebSocket: every turn 2 goes to the owning account."""
    sim.control.reset()
    prefix = unique_prefix("http") + ":"
    cfg = gateway_config(
        sim.base_url,
        accounts=2,
        overrides={"statestore": {"url": redis_server.url, "key_prefix": prefix}},
    )
    with run_gateway(cfg) as gw1, run_gateway({**cfg, "server": {"instance_id": "gw-2"}}) as gw2:

        async def conversation(index: int) -> tuple[str, str]:
            first = await post(
                gw1, stream=True, store=True, input=[user_message(f"remember {index}")]
            )
            assert first.status_code == 200, first.text
            rid = sse_events(first.content)[-1]["response"]["id"]
            if index % 2:
                second = await post(
                    gw2,
                    stream=True,
                    store=True,
                    previous_response_id=rid,
                    input=[user_message("which?")],
                )
                assert second.status_code == 200, second.text
                last = sse_events(second.content)[-1]
            else:
                ws = await open_ws(gw2.ws_url, auth_headers())
                try:
                    await ws.send(
                        create(
                            previous_response_id=rid,
                            store=True,
                            items=[user_message("which?")],
                        )
                    )
                    last = (await read_turn(ws))[-1]
                finally:
                    await ws.close()
            assert last["type"] == "response.completed", last
            return rid, last["response"]["id"]

        pairs = await asyncio.gather(*(conversation(i) for i in range(20)))
    log = sim.control.log()
    for first_id, second_id in pairs:
        first = log.by_response_id(first_id)
        second = log.by_response_id(second_id)
        assert first is not None and second is not None
        assert first.account_key == second.account_key
    keys = {log.by_response_id(first_id).account_key for first_id, _ in pairs}  # type: ignore[union-attr]
    assert len(keys) == 2  # both accounts took conversations
