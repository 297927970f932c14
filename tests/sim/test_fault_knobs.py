"""Every fault knob, observed from the client side and in the log."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.sim.helpers import (
    CALL,
    KEY_A,
    KEY_B,
    Event,
    Sim,
    calls_of,
    frame,
    open_ws,
    output_for,
    response_of,
    turn,
    types,
    user,
)


async def _events_until_closed(
    ws: ClientConnection, limit: int = 50
) -> tuple[list[Event], int | None]:
    events: list[Event] = []
    async with asyncio.timeout(20):
        try:
            while len(events) < limit:
                events.append(json.loads(await ws.recv()))
        except ConnectionClosed as closed:
            return events, closed.rcvd.code if closed.rcvd else None
    raise AssertionError("the socket stayed open")


async def test_handshake_status_refuses_then_recovers(sim: Sim) -> None:
    sim.control.add_fault(kind="handshake_status", status=503, retry_after=2, times=2)
    for _ in range(2):
        with pytest.raises(InvalidStatus) as refused:
            await open_ws(sim)
        assert refused.value.response.status_code == 503
        assert refused.value.response.headers["retry-after"] == "2"
        assert json.loads(refused.value.response.body or b"{}")["error"]["type"] == "server_error"
    ws = await open_ws(sim)
    await ws.close()
    log = sim.control.log()
    assert [c.handshake_status for c in log.connections] == [503, 503, 101]
    assert log.counters.handshakes_refused == 2


async def test_close_after_events_closes_with_the_code(sim: Sim) -> None:
    sim.control.add_fault(kind="close_after_events", after_events=2, code=1011)
    ws = await open_ws(sim)
    events, code = await _events_until_closed_after(ws, frame("cut me"))
    assert types(events) == ["response.created", "response.in_progress"]
    assert code == 1011
    log = sim.control.wait_for(lambda log: log.connections[0].closed_at is not None)
    assert log.requests[0].outcome == "closed:1011"
    assert log.requests[0].events_sent == 2 and not log.requests[0].completed_delivered
    assert (log.connections[0].close_code, log.connections[0].closed_by) == (1011, "server")


async def _events_until_closed_after(
    ws: ClientConnection, payload: str
) -> tuple[list[Event], int | None]:
    await ws.send(payload)
    return await _events_until_closed(ws)


async def test_close_after_events_abort_drops_tcp(sim: Sim) -> None:
    sim.control.add_fault(kind="close_after_events", after_events=0, mode="abort")
    ws = await open_ws(sim)
    events, code = await _events_until_closed_after(ws, frame("abort me"))
    assert events == [] and code is None  # no close frame: the client sees 1006
    assert sim.control.log().requests[0].outcome == "aborted"


async def test_error_event_before_any_event_and_after_k(sim: Sim) -> None:
    sim.control.add_fault(kind="error_event", after_events=0, status=500, code="server_error")
    sim.control.add_fault(
        kind="error_event", after_events=3, status=400, code="websocket_connection_limit_reached"
    )
    ws = await open_ws(sim)
    try:
        first = await turn(ws, frame("one"))
        second = await turn(ws, frame("two"))
        third = await turn(ws, frame("three"))
    finally:
        await ws.close()
    assert types(first) == ["error"] and first[0]["status"] == 500
    assert first[0]["error"]["code"] == "server_error"
    assert types(second)[:3] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
    ]
    assert second[3]["error"]["code"] == "websocket_connection_limit_reached" and len(second) == 4
    assert third[-1]["type"] == "response.completed"  # each rule fired once
    assert sim.control.log().outcomes() == [
        "error:server_error",
        "error:websocket_connection_limit_reached",
        "completed",
    ]


async def test_error_event_rule_waits_for_a_response_long_enough(sim: Sim) -> None:
    # A warm-up has 2 events: a rule for "after 5 events" is kept for the next response.
    sim.control.add_fault(kind="error_event", after_events=5, code="server_error")
    ws = await open_ws(sim)
    try:
        warm = await turn(ws, frame("w", generate=False))
        real = await turn(ws, frame("r", previous_response_id=response_of(warm)["id"]))
    finally:
        await ws.close()
    assert warm[-1]["type"] == "response.completed"
    assert len(real) == 6 and real[-1]["error"]["code"] == "server_error"


async def test_previous_response_not_found_rule_hits_the_next_chained_request(sim: Sim) -> None:
    sim.control.add_fault(kind="previous_response_not_found")
    ws = await open_ws(sim)
    try:
        first = await turn(ws, frame("unchained requests pass", store=True))
        rid = response_of(first)["id"]
        refused = await turn(ws, frame(items=[user("next")], previous_response_id=rid))
        retried = await turn(ws, frame(items=[user("next")], previous_response_id=rid))
    finally:
        await ws.close()
    assert first[-1]["type"] == "response.completed"
    assert refused[-1]["error"]["code"] == "previous_response_not_found"
    assert refused[-1]["error"]["message"] == f"Previous response with id '{rid}' not found."
    assert retried[-1]["type"] == "response.completed"  # store:true: found in persisted state


async def test_tool_output_missing_rule(sim: Sim) -> None:
    ws = await open_ws(sim)
    try:
        first = await turn(ws, frame(f"run {CALL}"))
        (call,) = calls_of(first)
        sim.control.add_fault(kind="tool_output_missing")
        refused = await turn(
            ws, frame(items=[output_for(call)], previous_response_id=response_of(first)["id"])
        )
    finally:
        await ws.close()
    assert refused[-1]["error"] == {
        "type": "invalid_request_error",
        "code": None,
        "message": f"No tool output found for function call {call['call_id']}.",
        "param": "input",
    }


async def test_silence_stops_events_and_pongs_then_drops(sim: Sim) -> None:
    sim.control.add_fault(kind="silence", after_events=2, duration_s=1)
    ws = await open_ws(sim)
    await ws.send(frame("hush [[sim deltas=5]]"))
    got = [json.loads(await ws.recv()), json.loads(await ws.recv())]
    pong = await ws.ping()
    with pytest.raises(ConnectionClosed):
        # No pong ever comes; the simulator drops the TCP connection after duration_s.
        await asyncio.wait_for(pong, 20)
    assert types(got) == ["response.created", "response.in_progress"]
    log = sim.control.log()
    assert log.requests[0].outcome == "silent" and log.requests[0].events_sent == 2


async def test_first_byte_delay_is_applied_and_recorded(sim: Sim) -> None:
    rule = sim.control.add_fault(kind="first_byte_delay_ms", delay_ms=50)
    ws = await open_ws(sim)
    try:
        events = await turn(ws, frame("later"))
    finally:
        await ws.close()
    assert events[-1]["type"] == "response.completed"
    (req,) = sim.control.log().requests
    assert req.faults == [rule] and req.outcome == "completed"


async def test_max_conn_age_refuses_old_sockets_then_closes(sim: Sim) -> None:
    sim.control.add_fault(kind="max_conn_age_s", age_s=0.05)
    ws = await open_ws(sim)
    await asyncio.sleep(0.1)  # let the socket age past the limit (a time rule, not a race)
    events, code = await _events_until_closed_after(ws, frame("too old"))
    assert events[0]["error"]["code"] == "websocket_connection_limit_reached"
    assert events[0]["error"]["message"].startswith("Responses websocket connection limit")
    assert code == 1000
    young = await open_ws(sim)
    try:
        assert (await turn(young, frame("fresh")))[-1]["type"] == "response.completed"
    finally:
        await young.close()


async def test_close_after_terminal_drops_the_idle_socket(sim: Sim) -> None:
    sim.control.add_fault(kind="close_after_terminal", code=1001)
    ws = await open_ws(sim)
    events, code = await _events_until_closed_after(ws, frame("last words"))
    assert events[-1]["type"] == "response.completed" and code == 1001
    req = sim.control.log().requests[0]
    assert req.completed_delivered and req.outcome == "completed"


async def test_http_status_rule_hits_the_next_post(sim: Sim) -> None:
    sim.control.add_fault(kind="http_status", status=429, retry_after=1, code="rate_limit_exceeded")
    body = {"model": "m", "input": "hi", "store": False}
    headers = {"Authorization": f"Bearer {KEY_A}"}
    async with httpx.AsyncClient(base_url=sim.http_url) as client:
        limited = await client.post("/v1/responses", json=body, headers=headers)
        ok = await client.post("/v1/responses", json=body, headers=headers)
    assert limited.status_code == 429 and limited.headers["retry-after"] == "1"
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"
    assert ok.status_code == 200
    assert sim.control.log().outcomes() == ["http:429", "completed"]


async def test_match_fields_account_generate_text_skip_probability(sim: Sim) -> None:
    sim.control.add_fault(kind="error_event", account_key=KEY_B, code="for_b")
    sim.control.add_fault(
        kind="error_event", generate=True, match_text="target", skip=1, code="second_target"
    )
    never = sim.control.add_fault(kind="error_event", probability=0.0, code="never")
    ws = await open_ws(sim)
    try:
        warm = await turn(ws, frame("target warm-up", generate=False))
        first = await turn(ws, frame("target one"))
        other = await turn(ws, frame("something else"))
        second = await turn(ws, frame("target two"))
    finally:
        await ws.close()
    assert [e[-1]["type"] for e in (warm, first, other)] == ["response.completed"] * 3
    assert second[-1]["error"]["code"] == "second_target"
    rules = {r["id"]: r for r in sim.control.faults()}
    assert rules[never]["times"] == 1 and rules[never]["fired"] == 0
    assert [r["fired"] for r in rules.values() if r["code"] == "for_b"] == [0]


async def test_unknown_fault_kind_is_refused(sim: Sim) -> None:
    with pytest.raises(ValueError, match="unknown fault kind"):
        sim.control.add_fault(kind="meteor_strike")
