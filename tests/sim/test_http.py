"""``POST /v1/responses``: SSE and JSON, account-scoped persisted state only."""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.sim.helpers import (
    CALL,
    KEY_A,
    KEY_B,
    Sim,
    frame,
    open_ws,
    response_of,
    turn,
    user,
)

AUTH_A = {"Authorization": f"Bearer {KEY_A}"}


def _sse_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return events


def test_sse_stream_has_the_websocket_event_sequence(sim: Sim) -> None:
    body = {"model": "m", "input": "say hi [[sim deltas=2]]", "stream": True, "store": False}
    with httpx.Client(base_url=sim.http_url) as client:
        response = client.post("/v1/responses", content=json.dumps(body), headers=AUTH_A)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = _sse_events(response.text)
    assert all(name == data["type"] for name, data in events)
    assert events[0][0] == "response.created"
    assert events[-1][0] == "response.completed"
    assert [d["sequence_number"] for _, d in events] == list(range(len(events)))
    (req,) = sim.control.log().requests
    assert req.transport == "http" and req.completed_delivered
    assert req.events_sent == len(events) and req.raw == json.dumps(body)


def test_json_answer_and_store_default_persists(sim: Sim) -> None:
    with httpx.Client(base_url=sim.http_url, headers=AUTH_A) as client:
        first = client.post("/v1/responses", json={"model": "m", "input": f"go {CALL}"})
        call = first.json()["output"][0]
        output = {"type": "function_call_output", "call_id": call["call_id"], "output": "42"}
        second = client.post(
            "/v1/responses",
            json={"model": "m", "input": [output], "previous_response_id": first.json()["id"]},
        )
    assert first.status_code == 200 and first.json()["status"] == "completed"
    assert call["type"] == "function_call" and first.json()["store"] is True
    assert second.status_code == 200
    assert second.json()["output"][0]["content"][0]["text"] == "tool said: 42"


async def test_http_never_sees_socket_state(sim: Sim) -> None:
    ws = await open_ws(sim)
    try:
        unstored = response_of(await turn(ws, frame("hi", store=False)))["id"]
        stored = response_of(await turn(ws, frame("hi", store=True)))["id"]
    finally:
        await ws.close()
    async with httpx.AsyncClient(base_url=sim.http_url) as client:
        results = {}
        for rid, key in ((unstored, KEY_A), (stored, KEY_A), (stored, KEY_B)):
            body = {"model": "m", "input": [user("more")], "previous_response_id": rid}
            results[(rid, key)] = await client.post(
                "/v1/responses", json=body, headers={"Authorization": f"Bearer {key}"}
            )
    missing = results[(unstored, KEY_A)]
    assert missing.status_code == 400
    assert missing.json()["error"]["code"] == "previous_response_not_found"
    assert missing.json()["error"]["param"] == "previous_response_id"
    assert results[(stored, KEY_A)].status_code == 200
    assert results[(stored, KEY_B)].status_code == 400  # another account's response


def test_websocket_only_fields_are_unknown_parameters(sim: Sim) -> None:
    with httpx.Client(base_url=sim.http_url, headers=AUTH_A) as client:
        generate = client.post("/v1/responses", json={"input": "x", "generate": False})
        typed = client.post("/v1/responses", json={"input": "x", "type": "response.create"})
    assert generate.status_code == typed.status_code == 400
    assert generate.json()["error"] == {
        "message": "Unknown parameter: 'generate'.",
        "type": "invalid_request_error",
        "param": "generate",
        "code": "unknown_parameter",
    }
    assert typed.json()["error"]["param"] == "type"


def test_bad_key_and_bad_json(sim: Sim) -> None:
    with httpx.Client(base_url=sim.http_url) as client:
        unauthorized = client.post("/v1/responses", json={"input": "x"})
        malformed = client.post("/v1/responses", content=b"{oops", headers=AUTH_A)
    assert unauthorized.status_code == 401
    assert unauthorized.json()["error"]["code"] == "invalid_api_key"
    assert malformed.status_code == 400
    assert sim.control.log().outcomes() == ["error:invalid_json"]


def test_sse_error_event_after_k_events(sim: Sim) -> None:
    sim.control.add_fault(kind="error_event", transport="http", after_events=2, code="server_error")
    body = {"model": "m", "input": "x", "stream": True}
    with httpx.Client(base_url=sim.http_url, headers=AUTH_A) as client:
        response = client.post("/v1/responses", json=body)
    events = _sse_events(response.text)
    assert [name for name, _ in events] == ["response.created", "response.in_progress", "error"]
    assert events[-1][1]["code"] == "server_error"
    assert sim.control.log().outcomes() == ["error:server_error"]
