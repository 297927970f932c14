"""Selective peeks at upstream events."""

from __future__ import annotations

import msgspec

from gateway.events import event_type, peek_response, pending_calls


def test_pending_calls_skip_server_executed_tool_search() -> None:
    frame = msgspec.json.encode(
        {
            "type": "response.completed",
            "response": {
                "id": "resp_1",
                "output": [
                    {"type": "function_call", "call_id": "c1"},
                    {"type": "custom_tool_call", "call_id": "c2"},
                    {"type": "tool_search_call", "call_id": "c3", "execution": "server"},
                    {"type": "tool_search_call", "call_id": "c4", "execution": "client"},
                    {"type": "message", "id": "m1"},
                ],
            },
        }
    )
    assert event_type(frame) == "response.completed"
    calls = pending_calls(peek_response(frame).output)
    assert calls == {"c1": "function_call", "c2": "custom_tool_call", "c4": "tool_search_call"}


def test_event_type_prefix_and_fallback() -> None:
    assert (
        event_type('{"type":"response.output_text.delta","delta":"x"}')
        == "response.output_text.delta"
    )
    assert event_type('{"sequence_number":1,"type":"response.created"}') == "response.created"
    assert event_type(b'{"type":"error"}') == "error"
