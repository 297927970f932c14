"""The control API and its clients: reset, drop, log filters, AsyncSimControl, wait_for."""

from __future__ import annotations

import asyncio
import json

import pytest
from websockets.exceptions import ConnectionClosed

from sim.control import AsyncSimControl
from tests.sim.helpers import KEY_A, KEY_B, Sim, frame, open_ws, response_of, turn, user


async def test_drop_idle_sockets_of_one_account(sim: Sim) -> None:
    idle_a, busy_a, idle_b = await open_ws(sim), await open_ws(sim), await open_ws(sim, key=KEY_B)
    try:
        await busy_a.send(frame("busy [[sim deltas=30 delay_ms=5]]"))
        await busy_a.recv()  # in flight now
        assert sim.control.drop_connections(account_key=KEY_A, idle_only=True) == 1
        with pytest.raises(ConnectionClosed) as closed:
            await idle_a.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        async with asyncio.timeout(20):
            while json.loads(await busy_a.recv())["type"] != "response.completed":
                pass
        assert (await turn(idle_b, frame("still open")))[-1]["type"] == "response.completed"
    finally:
        for ws in (idle_a, busy_a, idle_b):
            await ws.close()


async def test_drop_abort_mode_sends_no_close_frame(sim: Sim) -> None:
    ws = await open_ws(sim)
    assert sim.control.drop_connections(mode="abort") == 1
    with pytest.raises(ConnectionClosed) as closed:
        await ws.recv()
    assert closed.value.rcvd is None


async def test_reset_closes_sockets_and_forgets_everything(sim: Sim) -> None:
    ws = await open_ws(sim)
    stored = response_of(await turn(ws, frame("keep me", store=True)))["id"]
    sim.control.add_fault(kind="http_status", status=500)
    sim.control.reset()
    with pytest.raises(ConnectionClosed):
        await ws.recv()
    log = sim.control.log()
    assert log.requests == [] and log.connections == [] and sim.control.faults() == []
    fresh = await open_ws(sim)
    try:
        lost = await turn(fresh, frame(items=[user("x")], previous_response_id=stored))
    finally:
        await fresh.close()
    assert lost[-1]["error"]["code"] == "previous_response_not_found"


async def test_log_since_and_without_raw(sim: Sim) -> None:
    ws = await open_ws(sim)
    try:
        for word in ("one", "two", "three"):
            await turn(ws, frame(word))
    finally:
        await ws.close()
    tail = sim.control.log(since=1, raw=False)
    assert [r.seq for r in tail.requests] == [2, 3]
    assert all(r.raw == "" for r in tail.requests)
    assert [r.input_len for r in tail.requests] == [1, 1]
    full = sim.control.log()
    assert json.loads(full.requests[2].raw)["input"][0]["content"][0]["text"] == "three"
    assert full.requests[2].body()["model"] == "gpt-test"
    assert full["requests"][2]["outcome"] == "completed"  # dict-style access, as JSON
    assert json.loads(json.dumps(full))["counters"]["responses_completed"] == 3
    assert full.counters.requests_total == 3 and full.counters.events_sent == 33
    assert len(full.conn_ids_used()) == 1


async def test_async_control_and_wait_for(sim: Sim) -> None:
    async with AsyncSimControl(sim.http_url) as control:
        rule = await control.add_fault(kind="first_byte_delay_ms", delay_ms=1)
        assert [r["id"] for r in await control.faults()] == [rule]
        assert await control.remove_fault(rule) is True
        ws = await open_ws(sim)
        try:
            await ws.send(frame("hi"))
            log = await control.wait_for(
                lambda log: bool(log.requests) and log.requests[0].completed_delivered
            )
        finally:
            await ws.close()
        assert log.requests[0].faults == []
        assert await control.drop_connections() in (0, 1)
        with pytest.raises(AssertionError, match="never satisfied"):
            await control.wait_for(lambda log: False, timeout=0.1)
    with pytest.raises(AssertionError, match="never satisfied"):
        sim.control.wait_for(lambda log: len(log.requests) > 5, timeout=0.1)
