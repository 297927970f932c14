"""Passthrough end to end: a real gateway process in passthrough mode in front
of the simulator, driven over real WebSockets."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.e2e.client import create, open_ws, output_text, read_turn, terminal, turn
from tests.e2e.harness import (
    GatewayProcess,
    SimProcess,
    auth_headers,
    gateway_config,
    run_gateway,
)
from tests.support import eventually

pytestmark = pytest.mark.e2e

SMALL_LIMIT = 256 * 1024


@pytest.fixture(scope="module")
def gateway(sim: SimProcess) -> Iterator[GatewayProcess]:
    cfg = gateway_config(
        sim.base_url,
        overrides={
            "openai_ws": {"mode": "passthrough"},
            "server": {"max_message_bytes": SMALL_LIMIT},
        },
    )
    with run_gateway(cfg) as gw:
        yield gw


@pytest.fixture(autouse=True)
def _reset(sim: SimProcess) -> None:
    sim.control.reset()


async def scrape(gateway: GatewayProcess) -> str:
    async with httpx.AsyncClient(base_url=gateway.http_url) as client:
        return (await client.get("/metrics")).text


def _counter(metrics: str, name: str) -> float:
    line = next(line for line in metrics.splitlines() if line.startswith(name + " "))
    return float(line.split()[-1])


async def wait_for_metric(gateway: GatewayProcess, line: str, timeout: float = 10.0) -> None:
    """Poll /metrics until ``line`` appears (a deadline, not a sleep)."""

    async def present() -> bool:
        return line in await scrape(gateway)

    await eventually(present, timeout=timeout, interval=0.02, what=f"{line!r} in /metrics")


_IDS = re.compile(r'"(resp|msg|fc|call|rs)_[A-Za-z0-9]+"')
_TIMES = re.compile(r'"created_at":\s*\d+')


def _canonical(frame: str) -> str:
    return _TIMES.sub('"created_at":0', _IDS.sub('"\\1_X"', frame))


async def _raw_turn(url: str, headers: dict[str, str], payload: str) -> list[str]:
    ws = await open_ws(url, headers)
    frames: list[str] = []
    try:
        await ws.send(payload)
        while True:
            frame = str(await ws.recv())
            frames.append(frame)
            if json.loads(frame)["type"] in ("response.completed", "error"):
                return frames
    finally:
        await ws.close()


async def test_text_turn_is_relayed_byte_for_byte(sim: SimProcess, gateway: GatewayProcess) -> None:
    payload = create("say hello [[sim deltas=5]]")
    direct = await _raw_turn(
        f"ws://127.0.0.1:{sim.port}/v1/responses", {"Authorization": "Bearer sk-sim-a"}, payload
    )
    relayed = await _raw_turn(gateway.ws_url, auth_headers(), payload)
    assert len(relayed) == len(direct) >= 8
    # Identical bytes up to the ids and timestamps the upstream generates per response.
    assert [_canonical(f) for f in relayed] == [_canonical(f) for f in direct]
    assert json.loads(relayed[-1])["response"]["usage"]["total_tokens"] > 0


async def test_upgrade_response_echoes_turn_state(gateway: GatewayProcess) -> None:
    ws = await open_ws(gateway.ws_url, auth_headers())
    try:
        assert ws.response is not None
        assert ws.response.headers.get("x-codex-turn-state")
    finally:
        await ws.close()


async def test_client_disconnect_mid_turn_drains_and_socket_is_reused(
    sim: SimProcess, gateway: GatewayProcess
) -> None:
    drained_before = _counter(await scrape(gateway), "gateway_drained_turns_total")
    ws = await open_ws(gateway.ws_url, auth_headers())
    await ws.send(create("long answer [[sim deltas=200 delay_ms=2]]"))
    deltas = 0
    while deltas < 2:
        event = json.loads(await ws.recv())
        deltas += event["type"] == "response.output_text.delta"
    # Vanish without a close frame, as Codex does when it exits (1006).
    ws.transport.abort()
    await ws.wait_closed()  # abort() only schedules the close on this loop

    def drained(log: dict) -> bool:
        reqs = log["requests"]
        return (
            len(reqs) == 1 and reqs[0]["outcome"] == "completed" and reqs[0]["completed_delivered"]
        )

    log = sim.control.wait_for(drained, timeout=20)
    first = log["requests"][0]
    assert first["events_sent"] >= 200
    # The gateway read to the terminal event, counted the drained turn, and closed the
    # session (the gauge drops only after the upstream lease went back to the pool).
    await wait_for_metric(gateway, f"gateway_drained_turns_total {drained_before + 1:.1f}")
    await wait_for_metric(gateway, "gateway_client_sockets 0.0")

    # The next turn, from a new client socket, runs on the same healthy upstream socket.
    ws2 = await open_ws(gateway.ws_url, auth_headers())
    try:
        events = await turn(ws2, create("again"))
    finally:
        await ws2.close()
    assert terminal(events)["type"] == "response.completed"
    log = sim.control.log()
    assert len(log["connections"]) == 1
    assert [r["conn_id"] for r in log["requests"]] == [first["conn_id"], first["conn_id"]]


async def test_wrong_key_is_refused_with_401_json(gateway: GatewayProcess) -> None:
    with pytest.raises(InvalidStatus) as info:
        await open_ws(gateway.ws_url, auth_headers("sk-wrong"))
    response = info.value.response
    assert response.status_code == 401
    body = json.loads(response.body or b"{}")
    assert body["error"]["code"] == "invalid_api_key"


async def test_missing_key_is_refused_with_401(gateway: GatewayProcess) -> None:
    with pytest.raises(InvalidStatus) as info:
        await open_ws(gateway.ws_url, {})
    assert info.value.response.status_code == 401


async def test_oversized_frame_closes_1009_and_other_sockets_are_unaffected(
    gateway: GatewayProcess,
) -> None:
    bystander = await open_ws(gateway.ws_url, auth_headers())
    offender = await open_ws(gateway.ws_url, auth_headers())
    try:
        await bystander.send(create("slow [[sim deltas=30 delay_ms=5]]"))
        await offender.send(create("x" * (SMALL_LIMIT + 10)))
        with pytest.raises(ConnectionClosed) as closed:
            async with asyncio.timeout(10):
                while True:
                    await offender.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
        events = await read_turn(bystander)
        assert terminal(events)["type"] == "response.completed"
        assert len([e for e in events if e["type"] == "response.output_text.delta"]) == 30
    finally:
        await bystander.close()


async def test_malformed_json_gets_error_event_and_socket_stays_usable(
    gateway: GatewayProcess,
) -> None:
    ws = await open_ws(gateway.ws_url, auth_headers())
    try:
        await ws.send("{not json")
        error = json.loads(await ws.recv())
        assert error["type"] == "error" and error["status"] == 400
        assert error["error"]["code"] == "invalid_json"
        events = await turn(ws, create("still here"))
        assert terminal(events)["type"] == "response.completed"
    finally:
        await ws.close()


async def test_second_create_while_in_flight_gets_error_and_first_turn_completes(
    gateway: GatewayProcess,
) -> None:
    ws = await open_ws(gateway.ws_url, auth_headers())
    try:
        await ws.send(create("first [[sim deltas=20 delay_ms=5]]"))
        await ws.send(create("second"))
        events = []
        saw_busy = False
        async with asyncio.timeout(20):
            while True:
                event = json.loads(await ws.recv())
                if event["type"] == "error":
                    assert event["error"]["code"] == "conversation_already_has_active_response"
                    saw_busy = True
                    continue
                events.append(event)
                if event["type"] == "response.completed":
                    break
        assert saw_busy
        assert len([e for e in events if e["type"] == "response.output_text.delta"]) == 20
    finally:
        await ws.close()


async def test_fifty_concurrent_clients_are_isolated(gateway: GatewayProcess) -> None:
    async def one(i: int) -> tuple[int, str, str]:
        ws = await open_ws(gateway.ws_url, auth_headers())
        try:
            events = await turn(
                ws, create(f"client-{i:02d} [[sim deltas=4 delay_ms=2]]"), timeout=60
            )
            return i, terminal(events)["type"], output_text(events)
        finally:
            await ws.close()

    results = await asyncio.gather(*(one(i) for i in range(50)))
    for i, kind, text in results:
        assert kind == "response.completed"
        assert f"client-{i:02d}" in text  # every client got the answer to its own prompt


async def test_health_ready_and_metrics(gateway: GatewayProcess) -> None:
    async with httpx.AsyncClient(base_url=gateway.http_url) as client:
        assert (await client.get("/healthz")).json()["status"] == "ok"
        ready = await client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["statestore"] == "ok"
        metrics = (await client.get("/metrics")).text
        assert "gateway_turns_total" in metrics


@pytest.fixture
async def off_gateway(sim: SimProcess) -> AsyncIterator[GatewayProcess]:
    with run_gateway(gateway_config(sim.base_url, overrides={"openai_ws": {"mode": "off"}})) as gw:
        yield gw


async def test_mode_off_answers_426_and_http_still_serves(off_gateway: GatewayProcess) -> None:
    with pytest.raises(InvalidStatus) as info:
        await open_ws(off_gateway.ws_url, auth_headers())
    assert info.value.response.status_code == 426
    body = {"model": "gpt-test", "input": "hello over http", "stream": True, "store": False}
    async with httpx.AsyncClient(base_url=off_gateway.http_url, timeout=20) as client:
        async with client.stream(
            "POST", "/v1/responses", json=body, headers=auth_headers()
        ) as response:
            assert response.status_code == 200
            text = "".join([chunk async for chunk in response.aiter_text()])
    assert "response.completed" in text
