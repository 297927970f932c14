"""Graceful shutdown on one real gateway process: SIGTERM mid-turn, the turn finishes."""

from __future__ import annotations

import asyncio
import json
import signal

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.e2e.client import create, open_ws
from tests.e2e.harness import SimProcess, auth_headers, gateway_config, run_gateway

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("mode", ["ctx_pool", "passthrough"])
async def test_sigterm_lets_the_turn_in_flight_finish(sim: SimProcess, mode: str) -> None:
    cfg = gateway_config(
        sim.base_url, overrides={"openai_ws": {"mode": mode}, "server": {"drain_timeout_s": 20.0}}
    )
    with run_gateway(cfg) as gw:
        busy = await open_ws(gw.ws_url, auth_headers())
        idle = await open_ws(gw.ws_url, auth_headers())
        await busy.send(create("long [[sim deltas=200 delay_ms=5]]"))
        first = json.loads(await busy.recv())
        assert first["type"] == "response.created"

        gw.proc.signal(signal.SIGTERM)

        # The idle socket is told to reconnect elsewhere right away.
        with pytest.raises(ConnectionClosed) as idle_closed:
            async with asyncio.timeout(10):
                await idle.recv()
        assert idle_closed.value.rcvd is not None and idle_closed.value.rcvd.code == 1012

        # Not ready any more, and new sockets are refused while draining.
        async with httpx.AsyncClient(base_url=gw.http_url) as client:
            ready = await client.get("/readyz")
        assert ready.status_code == 503
        with pytest.raises(InvalidStatus) as refused:
            await open_ws(gw.ws_url, auth_headers())
        assert refused.value.response.status_code == 503

        # The turn in flight completes with every delta, then the socket is closed.
        deltas = 0
        async with asyncio.timeout(20):
            while True:
                event = json.loads(await busy.recv())
                deltas += event["type"] == "response.output_text.delta"
                if event["type"] == "response.completed":
                    break
        assert deltas == 200
        with pytest.raises(ConnectionClosed) as busy_closed:
            async with asyncio.timeout(10):
                await busy.recv()
        assert busy_closed.value.rcvd is not None and busy_closed.value.rcvd.code == 1012
        assert gw.proc.proc is not None
        assert await asyncio.to_thread(gw.proc.proc.wait, 15) == 0


async def test_sigterm_with_workers_drains_each_worker(sim: SimProcess) -> None:
    cfg = gateway_config(sim.base_url, overrides={"server": {"drain_timeout_s": 20.0}})
    with run_gateway(cfg, workers=2) as gw:
        ws = await open_ws(gw.ws_url, auth_headers())
        await ws.send(create("long [[sim deltas=150 delay_ms=5]]"))
        assert json.loads(await ws.recv())["type"] == "response.created"
        gw.proc.signal(signal.SIGTERM)  # the supervisor passes it on to its workers
        deltas = 0
        async with asyncio.timeout(20):
            while True:
                event = json.loads(await ws.recv())
                deltas += event["type"] == "response.output_text.delta"
                if event["type"] == "response.completed":
                    break
        assert deltas == 150
        with pytest.raises(ConnectionClosed) as closed:
            async with asyncio.timeout(10):
                await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
        assert gw.proc.proc is not None
        assert await asyncio.to_thread(gw.proc.proc.wait, 20) == 0
