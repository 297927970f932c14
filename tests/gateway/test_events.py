"""gateway.events on wire shapes: the type peek, typed peeks, pending calls, error frames."""

from __future__ import annotations

import json

import msgspec
import pytest

from gateway.events import (
    error_event,
    error_json,
    event_type,
    item_type_from_head,
    peek_error,
    peek_response,
    pending_calls,
)

COMPLETED_WITH_CALLS = json.dumps(
    {
        "type": "response.completed",
        "sequence_number": 17,
        "response": {
            "id": "resp_abc",
            "object": "response",
            "created_at": 1760000000,
            "status": "completed",
            "model": "gpt-5-codex",
            "output": [
                {
                    "id": "rs_1",
                    "type": "reasoning",
                    "summary": [],
                    "encrypted_content": "gAAAA...",
                },
                {
                    "id": "msg_1",
                    "type": "message",
                    "role": "assistant",
                    "status": "completed",
                    "content": [{"type": "output_text", "text": "Running it.", "annotations": []}],
                },
                {
                    "id": "fc_1",
                    "type": "function_call",
                    "call_id": "call_fn",
                    "name": "exec_command",
                    "arguments": '{"cmd": "ls -la", "call_id": "not_this_one"}',
                    "status": "completed",
                },
                {
                    "id": "ctc_1",
                    "type": "custom_tool_call",
                    "call_id": "call_custom",
                    "name": "apply_patch",
                    "input": "*** Begin Patch\n*** End Patch",
                    "status": "completed",
                },
            ],
            "usage": {
                "input_tokens": 1200,
                "input_tokens_details": {"cached_tokens": 1024},
                "output_tokens": 85,
                "output_tokens_details": {"reasoning_tokens": 40},
                "total_tokens": 1285,
            },
            "error": None,
            "incomplete_details": None,
        },
    }
)


# -- event_type ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        (
            '{"type":"response.output_text.delta","item_id":"msg_1","delta":"hi"}',
            "response.output_text.delta",
        ),
        ('{"type":"error","status":400,"error":{}}', "error"),
        ('{"type":"response.created","response":{"id":"resp_1"}}', "response.created"),
        ('{"type":""}', ""),
    ],
)
def test_event_type_fast_path(frame: str, expected: str) -> None:
    assert event_type(frame) == expected
    assert event_type(frame.encode()) == expected


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        # type is not the first key
        ('{"sequence_number":3,"type":"response.completed","response":{}}', "response.completed"),
        # whitespace after the brace / around the colon
        ('{ "type" : "response.in_progress" }', "response.in_progress"),
        # escaped characters inside the type value
        ('{"type":"response\\u002ecompleted"}', "response.completed"),
        ('{"type":"weird\\"quote"}', 'weird"quote'),
        ('{"type":"back\\\\slash","x":1}', "back\\slash"),
        # a type longer than the fast path's window
        ('{"type":"' + "x" * 120 + '"}', "x" * 120),
        # no type at all
        ('{"delta":"x"}', ""),
        ("{}", ""),
        # the type key nested, not at top level
        ('{"item":{"type":"message"}}', ""),
    ],
)
def test_event_type_fallback(frame: str, expected: str) -> None:
    assert event_type(frame) == expected
    assert event_type(frame.encode()) == expected


def test_event_type_bytes_returns_str() -> None:
    etype = event_type(b'{"type":"response.output_item.done","item":{}}')
    assert etype == "response.output_item.done" and isinstance(etype, str)
    assert event_type(b'{"seq":1,"type":"x"}') == "x"


@pytest.mark.parametrize("frame", ["not json", "", b"\x00\x01", "[1, 2", '{"type": 5}', "[]"])
def test_event_type_rejects_non_json_or_wrong_shape(frame: str | bytes) -> None:
    with pytest.raises(msgspec.DecodeError):
        event_type(frame)


# -- peek_response / pending_calls ----------------------------------------------------


def test_peek_response_on_a_completed_turn_with_tool_calls() -> None:
    resp = peek_response(COMPLETED_WITH_CALLS)
    assert resp.id == "resp_abc"
    assert resp.status == "completed"
    assert resp.model == "gpt-5-codex"
    assert len(resp.output) == 4
    assert resp.usage is not None
    assert (resp.usage.input_tokens, resp.usage.output_tokens, resp.usage.total_tokens) == (
        1200,
        85,
        1285,
    )
    assert resp.error is None
    # the raw output items are the exact bytes of each item
    items = json.loads(COMPLETED_WITH_CALLS)["response"]["output"]
    assert [json.loads(bytes(raw)) for raw in resp.output] == items


def test_pending_calls_keeps_only_tool_calls() -> None:
    resp = peek_response(COMPLETED_WITH_CALLS.encode())
    assert pending_calls(resp.output) == {
        "call_fn": "function_call",
        "call_custom": "custom_tool_call",
    }


def test_pending_calls_other_call_types_and_items_without_call_id() -> None:
    items = [
        {"type": "local_shell_call", "call_id": "call_sh", "action": {}},
        {"type": "tool_search_call", "call_id": "call_ts"},
        {"type": "function_call", "name": "no_call_id"},
        {"type": "function_call_output", "call_id": "call_out", "output": "x"},
        {"type": "web_search_call", "id": "ws_1", "status": "completed"},
    ]
    raws = [msgspec.Raw(json.dumps(i).encode()) for i in items]
    assert pending_calls(raws) == {"call_sh": "local_shell_call", "call_ts": "tool_search_call"}
    assert pending_calls([]) == {}


def test_pending_calls_skip_a_server_executed_tool_search() -> None:
    items = [
        {"type": "function_call", "call_id": "c1"},
        {"type": "tool_search_call", "call_id": "c2", "execution": "server"},
        {"type": "tool_search_call", "call_id": "c3", "execution": "client"},
        {"type": "message", "id": "m1"},
    ]
    raws = [msgspec.Raw(json.dumps(i).encode()) for i in items]
    assert pending_calls(raws) == {"c1": "function_call", "c3": "tool_search_call"}


def _compact(item: dict[str, object]) -> msgspec.Raw:
    return msgspec.Raw(json.dumps(item, separators=(",", ":")).encode())


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ({"type": "message", "content": []}, "message"),
        ({"id": "msg_1", "type": "message", "role": "assistant"}, "message"),
        ({"id": "fc_1", "type": "function_call", "call_id": "c1"}, "function_call"),
        # the top-level type is not where it is trusted: a decode decides
        ({"role": "assistant", "type": "message"}, None),
        ({"id": "m", "content": [{"type": "output_text"}], "type": "message"}, None),
        ({"id": 'a"b', "type": "message"}, None),  # escaped id
        ({"type": "fun\nny"}, None),  # escaped type
        ({"id": "x" * 200, "type": "message"}, None),  # type beyond the head
    ],
)
def test_item_type_from_head_reads_only_a_top_level_type(
    item: dict[str, object], expected: str | None
) -> None:
    assert item_type_from_head(_compact(item)) == expected


def test_item_type_from_head_needs_compact_json() -> None:
    assert item_type_from_head(msgspec.Raw(b'{"id": "m", "type": "message"}')) is None


def test_pending_calls_same_answer_on_compact_upstream_items() -> None:
    big_text = "x" * 20_000
    items: list[dict[str, object]] = [
        {"id": "msg_1", "type": "message", "content": [{"type": "output_text", "text": big_text}]},
        {"id": "fc_1", "type": "function_call", "call_id": "c1", "name": "f"},
        {"id": "ts_1", "type": "tool_search_call", "call_id": "c2", "execution": "server"},
        {"type": "custom_tool_call", "call_id": "c3", "input": "x"},
        {"type": "function_call_output", "call_id": "c4", "output": "x"},
        # a message-looking nested type before the top-level one: decoded, still a call
        {"call_id": "c5", "content": [{"type": "message"}], "type": "local_shell_call"},
    ]
    raws = [_compact(item) for item in items]
    assert pending_calls(raws) == {
        "c1": "function_call",
        "c3": "custom_tool_call",
        "c5": "local_shell_call",
    }


def test_peek_response_created_and_failed() -> None:
    created = (
        '{"type":"response.created","sequence_number":0,"response":{"id":"resp_1",'
        '"object":"response","status":"in_progress","model":"gpt-5","output":[]}}'
    )
    resp = peek_response(created)
    assert (resp.id, resp.status, resp.model, resp.output, resp.usage) == (
        "resp_1",
        "in_progress",
        "gpt-5",
        [],
        None,
    )
    failed = json.dumps(
        {
            "type": "response.failed",
            "response": {
                "id": "resp_2",
                "status": "failed",
                "output": [],
                "error": {"code": "server_error", "message": "The server had an error"},
            },
        }
    )
    resp = peek_response(failed)
    assert resp.status == "failed"
    assert resp.error is not None
    assert (resp.error.code, resp.error.message) == ("server_error", "The server had an error")


def test_peek_response_without_a_response_object() -> None:
    resp = peek_response('{"type":"response.output_text.delta","delta":"x"}')
    assert (resp.id, resp.status, resp.output) == ("", "", [])


# -- peek_error -------------------------------------------------------------------------


def test_peek_error_previous_response_not_found() -> None:
    frame = json.dumps(
        {
            "type": "error",
            "status": 400,
            "error": {
                "type": "invalid_request_error",
                "code": "previous_response_not_found",
                "message": "Previous response with id 'resp_x' not found.",
                "param": "previous_response_id",
            },
            "headers": {"x-request-id": "req_1"},
        }
    )
    peek = peek_error(frame)
    assert peek.type == "error" and peek.status == 400 and peek.status_code is None
    assert peek.error is not None
    assert peek.error.code == "previous_response_not_found"
    assert peek.error.param == "previous_response_id"
    assert peek.error.type == "invalid_request_error"


def test_peek_error_status_code_alias_and_null_code() -> None:
    frame = (
        '{"type":"error","status_code":400,"error":{"type":"invalid_request_error",'
        '"code":null,"message":"No tool output found for function call call_1.","param":"input"}}'
    )
    peek = peek_error(frame.encode())
    assert peek.status is None and peek.status_code == 400
    assert peek.error is not None and peek.error.code is None
    assert peek.error.message == "No tool output found for function call call_1."


# -- frames the gateway writes -----------------------------------------------------------


def test_error_event_shape_is_exactly_the_upstream_shape() -> None:
    # BUG: see report — error.type is dropped when it equals the default.
    frame = error_event(
        400,
        "previous_response_not_found",
        "Previous response was not found.",
        param="previous_response_id",
    )
    assert json.loads(frame) == {
        "type": "error",
        "status": 400,
        "error": {
            "type": "invalid_request_error",
            "code": "previous_response_not_found",
            "message": "Previous response was not found.",
            "param": "previous_response_id",
        },
    }


def test_error_event_default_error_type_is_present() -> None:
    # BUG: see report — omit_defaults drops error.type when it is the default value.
    body = json.loads(error_event(409, "conversation_already_has_active_response", "busy"))
    assert body["error"]["type"] == "invalid_request_error"
    assert set(body) == {"type", "status", "error"}
    assert body["error"]["code"] == "conversation_already_has_active_response"
    assert body["error"]["message"] == "busy"


def test_error_event_other_type_and_null_code() -> None:
    body = json.loads(error_event(502, None, "upstream gone", error_type="server_error"))
    assert body == {
        "type": "error",
        "status": 502,
        "error": {"type": "server_error", "code": None, "message": "upstream gone"},
    }


def test_error_event_is_readable_by_the_fast_type_peek() -> None:
    frame = error_event(500, "x", "y")
    assert frame.startswith('{"type":"error"')
    assert event_type(frame) == "error"
    peek = peek_error(frame)
    assert peek.status == 500 and peek.error is not None and peek.error.code == "x"


def test_error_event_escapes_the_message() -> None:
    message = 'bad "quote"\nnewline \\ and ünïcode'
    assert json.loads(error_event(400, "c", message))["error"]["message"] == message


def test_error_json_is_the_openai_http_shape() -> None:
    assert json.loads(error_json(401, "invalid_api_key", "bad key", "invalid_request_error")) == {
        "error": {
            "message": "bad key",
            "type": "invalid_request_error",
            "code": "invalid_api_key",
            "param": None,
        }
    }
