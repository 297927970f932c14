"""The WebSocket endpoint against the real API's rules (frames, events, continuation), over a real socket."""

from __future__ import annotations

import asyncio
import json

import pytest
from websockets.exceptions import InvalidStatus

from tests.sim.helpers import (
    CALL,
    KEY_A,
    KEY_B,
    Sim,
    calls_of,
    frame,
    open_ws,
    output_for,
    response_of,
    text_of,
    turn,
    types,
    user,
)

TEXT_TURN = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.delta",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]


async def test_text_turn_event_sequence(sim: Sim) -> None:
    ws = await open_ws(sim)
    try:
        assert ws.response is not None
        assert ws.response.headers["x-codex-turn-state"].startswith("ts-")
        events = await turn(ws, frame("say hello"))
    finally:
        await ws.close()
    assert types(events) == TEXT_TURN
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    created, completed = response_of(events[:1]), response_of(events)
    assert created["id"] == completed["id"] and created["id"].startswith("resp_")
    assert created["status"] == "in_progress" and completed["status"] == "completed"
    deltas = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert deltas == "sim-answer: say hello w1 w2" == text_of(events)
    (item,) = completed["output"]
    assert item["id"].startswith("msg_") and item["role"] == "assistant"
    usage = completed["usage"]
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"] > 0
    assert set(usage["input_tokens_details"]) == {"cached_tokens"}
    assert set(usage["output_tokens_details"]) == {"reasoning_tokens"}


async def test_directives_set_delta_count_and_size(sim: Sim) -> None:
    ws = await open_ws(sim)
    try:
        events = await turn(ws, frame("big [[sim deltas=7 delta_bytes=3000]]"))
    finally:
        await ws.close()
    deltas = [e["delta"] for e in events if e["type"] == "response.output_text.delta"]
    assert len(deltas) == 7
    assert all(len(d) == 3000 for d in deltas)
    assert text_of(events) == "".join(deltas)


async def test_codex_alias_path_and_recorded_headers(sim: Sim) -> None:
    ws = await open_ws(
        sim,
        path="/backend-api/codex/responses",
        **{"OpenAI-Beta": "responses_websockets=2026-02-06", "x-codex-turn-state": "tok-7"},
    )
    try:
        assert ws.response is not None
        assert ws.response.headers["x-codex-turn-state"] == "tok-7"  # the client's token echoed
        await turn(ws, frame("hi"))
    finally:
        await ws.close()
    (conn,) = sim.control.wait_for(lambda log: log.connections[0].closed_at is not None).connections
    assert conn.path == "/backend-api/codex/responses"
    assert conn.headers["openai-beta"] == "responses_websockets=2026-02-06"
    assert conn.account_key == KEY_A and conn.handshake_status == 101
    assert (conn.close_code, conn.closed_by) == (1000, "client")


async def test_bad_key_is_refused_with_401_json(sim: Sim) -> None:
    with pytest.raises(InvalidStatus) as refused:
        await open_ws(sim, key="sk-not-configured")
    assert refused.value.response.status_code == 401
    body = json.loads(refused.value.response.body or b"{}")
    assert body["error"]["code"] == "invalid_api_key"
    assert [c.handshake_status for c in sim.control.log().connections] == [401]


async def test_function_call_turn_then_output_on_same_socket(sim: Sim) -> None:
    ws = await open_ws(sim)
    try:
        first = await turn(ws, frame(f"run it {CALL}"))
        (call,) = calls_of(first)
        second = await turn(
            ws,
            frame(items=[output_for(call, "ok")], previous_response_id=response_of(first)["id"]),
        )
    finally:
        await ws.close()
    assert types(first) == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        *["response.function_call_arguments.delta"] * 3,
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    added = first[2]["item"]
    assert added["arguments"] == "" and added["status"] == "in_progress"
    args = "".join(e["delta"] for e in first if e["type"].endswith("arguments.delta"))
    assert args == '{"cmd":"echo ok"}' == call["arguments"]
    assert call["id"].startswith("fc_") and call["call_id"].startswith("call_")
    assert call["name"] == "exec_command"
    assert text_of(second) == "tool said: ok"
    # the continuation was cheap: the chained context came from the socket's cache
    assert response_of(second)["usage"]["input_tokens_details"]["cached_tokens"] > 0
    reqs = sim.control.log().requests
    assert reqs[1].previous_response_id == response_of(first)["id"]
    assert reqs[0].conn_id == reqs[1].conn_id
    assert [r.outcome for r in reqs] == ["completed", "completed"]


async def test_parallel_calls_need_every_output(sim: Sim) -> None:
    ws = await open_ws(sim)
    try:
        first = await turn(ws, frame(f"fan out {CALL} [[sim calls=3]]"))
        calls = calls_of(first)
        partial = await turn(
            ws,
            frame(
                items=[output_for(c) for c in calls[:2]],
                previous_response_id=response_of(first)["id"],
            ),
        )
    finally:
        await ws.close()
    assert len({c["call_id"] for c in calls}) == 3
    added = [e["output_index"] for e in first if e["type"] == "response.output_item.added"]
    assert added == [0, 1, 2]
    assert partial[-1] == {
        "type": "error",
        "status": 400,
        "error": {
            "type": "invalid_request_error",
            "code": None,
            "message": f"No tool output found for function call {calls[2]['call_id']}.",
            "param": "input",
        },
    }


async def test_orphan_output_is_refused(sim: Sim) -> None:
    ws = await open_ws(sim)
    try:
        events = await turn(ws, frame(items=[user("hi"), output_for({"call_id": "call_ghost"})]))
    finally:
        await ws.close()
    assert events[-1]["error"]["message"] == (
        "No tool call found for function call output with call_id call_ghost."
    )
    assert events[-1]["status"] == 400 and events[-1]["error"]["param"] == "input"


async def test_custom_tool_call_without_output_names_its_kind(sim: Sim) -> None:
    ws = await open_ws(sim)
    try:
        first = await turn(ws, frame("[[sim custom apply_patch *** Begin Patch]]"))
        (call,) = response_of(first)["output"]
        missing = await turn(
            ws, frame(items=[user("next")], previous_response_id=response_of(first)["id"])
        )
    finally:
        await ws.close()
    assert call["type"] == "custom_tool_call" and call["input"] == "*** Begin Patch"
    assert "response.custom_tool_call_input.done" in types(first)
    assert missing[-1]["error"]["message"] == (
        f"No tool output found for custom tool call {call['call_id']}."
    )


async def test_store_false_id_is_unknown_on_another_socket(sim: Sim) -> None:
    ws1, ws2 = await open_ws(sim), await open_ws(sim)
    try:
        first = await turn(ws1, frame("remember PAPAYA"))
        rid = response_of(first)["id"]
        other = await turn(ws2, frame(items=[user("which?")], previous_response_id=rid))
        same = await turn(ws1, frame(items=[user("which?")], previous_response_id=rid))
    finally:
        await ws1.close()
        await ws2.close()
    assert other == [
        {
            "type": "error",
            "status": 400,
            "error": {
                "type": "invalid_request_error",
                "code": "previous_response_not_found",
                "message": f"Previous response with id '{rid}' not found.",
                "param": "previous_response_id",
            },
        }
    ]
    assert same[-1]["type"] == "response.completed"


async def test_store_true_id_resolves_on_any_socket_of_the_account_only(sim: Sim) -> None:
    ws1, ws2, ws_b = await open_ws(sim), await open_ws(sim), await open_ws(sim, key=KEY_B)
    try:
        first = await turn(ws1, frame("remember KIWI", store=True))
        rid = response_of(first)["id"]
        other = await turn(ws2, frame(items=[user("which?")], previous_response_id=rid))
        foreign = await turn(ws_b, frame(items=[user("which?")], previous_response_id=rid))
    finally:
        for ws in (ws1, ws2, ws_b):
            await ws.close()
    assert other[-1]["type"] == "response.completed"
    assert other[-1]["response"]["previous_response_id"] == rid
    assert foreign[-1]["error"]["code"] == "previous_response_not_found"


async def test_only_the_latest_response_is_cached_on_a_socket(sim: Sim) -> None:
    ws = await open_ws(sim)
    try:
        first = await turn(ws, frame("one"))
        await turn(ws, frame("two"))
        stale = await turn(
            ws, frame(items=[user("x")], previous_response_id=response_of(first)["id"])
        )
    finally:
        await ws.close()
    assert stale[-1]["error"]["code"] == "previous_response_not_found"


async def test_failed_request_evicts_the_cached_response(sim: Sim) -> None:
    ws = await open_ws(sim)
    try:
        first = await turn(ws, frame(f"run {CALL}"))
        rid = response_of(first)["id"]
        refused = await turn(ws, frame(items=[user("no output")], previous_response_id=rid))
        (call,) = calls_of(first)
        evicted = await turn(ws, frame(items=[output_for(call)], previous_response_id=rid))
    finally:
        await ws.close()
    assert refused[-1]["error"]["message"].startswith("No tool output found")
    assert evicted[-1]["error"]["code"] == "previous_response_not_found"


async def test_warm_up_then_chained_request(sim: Sim) -> None:
    ws = await open_ws(sim)
    try:
        warm = await turn(
            ws,
            frame(
                items=[
                    {"type": "message", "role": "developer", "content": "base"},
                    user("context [[sim deltas=5]]"),
                ],
                generate=False,
            ),
        )
        chained = await turn(ws, frame(items=[], previous_response_id=response_of(warm)["id"]))
    finally:
        await ws.close()
    assert types(warm) == ["response.created", "response.completed"]
    done = response_of(warm)
    assert done["output"] == [] and done["usage"]["total_tokens"] == 0
    assert done["usage"]["input_tokens"] == done["usage"]["output_tokens"] == 0
    # the warm-up's input is the chained request's context: its directive sets 5 deltas
    assert types(chained).count("response.output_text.delta") == 5
    assert text_of(chained).startswith("sim-answer: context")
    reqs = sim.control.log().requests
    assert [r.generate for r in reqs] == [False, None]


async def test_one_response_in_flight_per_socket(sim: Sim) -> None:
    ws = await open_ws(sim)
    try:
        await ws.send(frame("slow [[sim deltas=20 delay_ms=10]]"))
        first_event = json.loads(await ws.recv())
        await ws.send(frame("too soon"))
        events = [first_event]
        async with asyncio.timeout(20):
            while events[-1]["type"] != "response.completed":
                events.append(json.loads(await ws.recv()))
        rejected = [e for e in events if e["type"] == "error"]
        after = await turn(ws, frame("now"))
    finally:
        await ws.close()
    assert len(rejected) == 1
    assert rejected[0]["error"]["code"] == "conversation_already_has_active_response"
    assert rejected[0]["status"] == 400
    assert events[-1]["type"] == "response.completed"
    assert types(events).count("response.output_text.delta") == 20
    assert after[-1]["type"] == "response.completed"
    outcomes = sim.control.log().outcomes()
    assert outcomes == ["completed", "error:conversation_already_has_active_response", "completed"]


async def test_malformed_and_unknown_frames_get_errors_and_socket_stays_open(sim: Sim) -> None:
    ws = await open_ws(sim)
    try:
        await ws.send("{not json")
        bad_json = json.loads(await ws.recv())
        await ws.send(json.dumps({"type": "response.cancel"}))
        unknown = json.loads(await ws.recv())
        ok = await turn(ws, frame("still here"))
    finally:
        await ws.close()
    assert bad_json["type"] == "error" and bad_json["error"]["code"] == "invalid_json"
    assert unknown["error"]["code"] == "unknown_event_type"
    assert ok[-1]["type"] == "response.completed"
    raws = [r.raw for r in sim.control.log().requests]
    assert raws[:2] == ["{not json", '{"type": "response.cancel"}']


async def test_ping_is_answered(sim: Sim) -> None:
    ws = await open_ws(sim)
    try:
        pong = await ws.ping()
        latency = await pong
    finally:
        await ws.close()
    assert latency >= 0


async def test_terminal_failed_and_incomplete_directives(sim: Sim) -> None:
    ws = await open_ws(sim)
    try:
        failed = await turn(ws, frame("[[sim terminal=failed]]"))
        incomplete = await turn(ws, frame("[[sim terminal=incomplete]]"))
        chained = await turn(
            ws, frame(items=[user("go on")], previous_response_id=response_of(incomplete)["id"])
        )
    finally:
        await ws.close()
    assert failed[-1]["type"] == "response.failed"
    assert response_of(failed)["error"]["code"] == "server_error"
    assert incomplete[-1]["type"] == "response.incomplete"
    assert response_of(incomplete)["incomplete_details"] == {"reason": "max_output_tokens"}
    assert chained[-1]["type"] == "response.completed"


async def test_client_gone_mid_stream_is_recorded(sim: Sim) -> None:
    ws = await open_ws(sim)
    await ws.send(frame("long [[sim deltas=200 delay_ms=5]]"))
    await ws.recv()
    assert ws.transport is not None
    ws.transport.abort()
    await ws.wait_closed()
    log = sim.control.wait_for(lambda log: log.requests[0].outcome != "in_flight")
    (req,) = log.requests
    assert req.outcome == "client_gone" and not req.completed_delivered
    assert 1 <= req.events_sent < 200
    assert log.counters.client_gone == 1
