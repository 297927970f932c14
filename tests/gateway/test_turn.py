"""gateway.turn: TurnTracker over realistic upstream event sequences; error info helpers."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from gateway.events import ErrorBody, ErrorEventPeek
from gateway.turn import TurnOutcome, TurnTracker, UpstreamErrorInfo

USAGE = {
    "input_tokens": 11,
    "input_tokens_details": {"cached_tokens": 0},
    "output_tokens": 4,
    "output_tokens_details": {"reasoning_tokens": 0},
    "total_tokens": 15,
}


def frame(event: dict[str, Any]) -> str:
    return json.dumps(event, separators=(",", ":"))


def text_turn(resp_id: str = "resp_text") -> list[str]:
    """A plain text turn as Codex 0.169.0 accepted it."""
    msg_done = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": "Hello!", "annotations": []}],
    }
    base = {"id": resp_id, "object": "response", "model": "gpt-5"}
    return [
        frame(
            {
                "type": "response.created",
                "sequence_number": 0,
                "response": {**base, "status": "in_progress", "output": []},
            }
        ),
        frame(
            {
                "type": "response.in_progress",
                "sequence_number": 1,
                "response": {**base, "status": "in_progress", "output": []},
            }
        ),
        frame(
            {
                "type": "response.output_item.added",
                "sequence_number": 2,
                "output_index": 0,
                "item": {**msg_done, "status": "in_progress", "content": []},
            }
        ),
        frame(
            {
                "type": "response.content_part.added",
                "sequence_number": 3,
                "item_id": "msg_1",
                "output_index": 0,
                "content_index": 0,
                "part": {"type": "output_text", "text": ""},
            }
        ),
        frame(
            {
                "type": "response.output_text.delta",
                "sequence_number": 4,
                "item_id": "msg_1",
                "output_index": 0,
                "content_index": 0,
                "delta": "Hello",
            }
        ),
        frame(
            {
                "type": "response.output_text.delta",
                "sequence_number": 5,
                "item_id": "msg_1",
                "output_index": 0,
                "content_index": 0,
                "delta": "!",
            }
        ),
        frame(
            {
                "type": "response.output_text.done",
                "sequence_number": 6,
                "item_id": "msg_1",
                "output_index": 0,
                "content_index": 0,
                "text": "Hello!",
            }
        ),
        frame(
            {
                "type": "response.output_item.done",
                "sequence_number": 7,
                "output_index": 0,
                "item": msg_done,
            }
        ),
        frame(
            {
                "type": "response.completed",
                "sequence_number": 8,
                "response": {**base, "status": "completed", "output": [msg_done], "usage": USAGE},
            }
        ),
    ]


def function_call_turn(resp_id: str = "resp_fc") -> list[str]:
    """A function-call turn: the response ends with a call the client must answer."""
    call = {
        "type": "function_call",
        "id": "fc_1",
        "call_id": "call_1",
        "name": "exec_command",
        "arguments": '{"cmd": "ls"}',
        "status": "completed",
    }
    base = {"id": resp_id, "object": "response", "model": "gpt-5-codex"}
    return [
        frame(
            {
                "type": "response.created",
                "response": {**base, "status": "in_progress", "output": []},
            }
        ),
        frame(
            {
                "type": "response.output_item.added",
                "output_index": 0,
                "item": {**call, "arguments": "", "status": "in_progress"},
            }
        ),
        frame(
            {
                "type": "response.function_call_arguments.delta",
                "item_id": "fc_1",
                "output_index": 0,
                "delta": '{"cmd": "ls"}',
            }
        ),
        frame(
            {
                "type": "response.function_call_arguments.done",
                "item_id": "fc_1",
                "output_index": 0,
                "arguments": '{"cmd": "ls"}',
            }
        ),
        frame({"type": "response.output_item.done", "output_index": 0, "item": call}),
        frame(
            {
                "type": "response.completed",
                "response": {**base, "status": "completed", "output": [call], "usage": USAGE},
            }
        ),
    ]


def test_text_turn() -> None:
    tracker = TurnTracker()
    frames = text_turn()
    types = []
    for f in frames[:-1]:
        types.append(tracker.observe(f))
        assert not tracker.done and tracker.outcome is None
    types.append(tracker.observe(frames[-1].encode()))  # bytes frames are fine too
    assert types == [json.loads(f)["type"] for f in frames]
    assert tracker.done and tracker.outcome is TurnOutcome.COMPLETED
    assert tracker.events == len(frames)
    assert tracker.response_id == "resp_text"
    assert tracker.model == "gpt-5"
    assert tracker.status == "completed"
    assert tracker.pending == {}
    assert len(tracker.output) == 1
    assert json.loads(bytes(tracker.output[0]))["type"] == "message"
    assert (tracker.input_tokens, tracker.output_tokens, tracker.total_tokens) == (11, 4, 15)
    assert tracker.error is None


def test_response_id_is_known_from_response_created() -> None:
    tracker = TurnTracker()
    tracker.observe(text_turn("resp_early")[0])
    assert tracker.response_id == "resp_early" and not tracker.done


def test_function_call_turn_leaves_pending_calls() -> None:
    tracker = TurnTracker()
    for f in function_call_turn():
        tracker.observe(f)
    assert tracker.outcome is TurnOutcome.COMPLETED
    assert tracker.response_id == "resp_fc"
    assert tracker.pending == {"call_1": "function_call"}
    assert tracker.model == "gpt-5-codex"


def test_warm_up_turn_has_an_id_and_empty_output() -> None:
    """generate:false answers response.created + response.completed with output []."""
    tracker = TurnTracker()
    tracker.observe(
        frame({"type": "response.created", "response": {"id": "resp_w", "status": "in_progress"}})
    )
    tracker.observe(
        frame(
            {
                "type": "response.completed",
                "response": {"id": "resp_w", "status": "completed", "output": []},
            }
        )
    )
    assert tracker.outcome is TurnOutcome.COMPLETED and tracker.response_id == "resp_w"
    assert tracker.output == [] and tracker.pending == {}
    assert tracker.total_tokens == 0  # no usage object: counts stay zero


def test_response_failed() -> None:
    tracker = TurnTracker()
    tracker.observe(text_turn("resp_f")[0])
    tracker.observe(
        frame(
            {
                "type": "response.failed",
                "response": {
                    "id": "resp_f",
                    "status": "failed",
                    "output": [],
                    "error": {"code": "rate_limit_exceeded", "message": "try again in 2s"},
                    "usage": {"input_tokens": 7, "output_tokens": 0, "total_tokens": 7},
                },
            }
        )
    )
    assert tracker.done and tracker.outcome is TurnOutcome.FAILED
    assert tracker.status == "failed"
    assert tracker.response_id == "resp_f"
    assert tracker.input_tokens == 7 and tracker.total_tokens == 7
    assert tracker.error is None  # a response.failed is not an `error` event


@pytest.mark.parametrize(
    ("etype", "status", "outcome"),
    [
        ("response.completed", "completed", TurnOutcome.COMPLETED),
        ("response.done", "completed", TurnOutcome.COMPLETED),
        ("response.failed", "failed", TurnOutcome.FAILED),
        ("response.incomplete", "incomplete", TurnOutcome.INCOMPLETE),
        ("response.cancelled", "cancelled", TurnOutcome.CANCELLED),
        ("response.canceled", "cancelled", TurnOutcome.CANCELLED),
    ],
)
def test_terminal_types_map_to_outcomes(etype: str, status: str, outcome: TurnOutcome) -> None:
    tracker = TurnTracker()
    tracker.observe(frame({"type": etype, "response": {"id": "r", "status": status}}))
    assert tracker.done and tracker.outcome is outcome and tracker.status == status


def test_outcome_values_are_stable_labels() -> None:
    assert {o.value for o in TurnOutcome} == {
        "completed",
        "failed",
        "incomplete",
        "cancelled",
        "error",
    }


def test_error_event_as_first_frame() -> None:
    raw = frame(
        {
            "type": "error",
            "status": 400,
            "error": {
                "type": "invalid_request_error",
                "code": "previous_response_not_found",
                "message": "Previous response with id 'resp_old' not found.",
                "param": "previous_response_id",
            },
        }
    )
    tracker = TurnTracker()
    assert tracker.observe(raw) == "error"
    assert tracker.done and tracker.outcome is TurnOutcome.ERROR
    assert tracker.response_id is None
    assert tracker.error is not None
    assert tracker.error.status == 400
    assert tracker.error.code == "previous_response_not_found"
    assert tracker.error.frame == raw  # the exact frame, for relaying as-is
    assert tracker.error.is_previous_not_found
    assert not tracker.error.is_tool_output_missing


def test_error_event_mid_stream_keeps_the_response_id() -> None:
    tracker = TurnTracker()
    tracker.observe(text_turn("resp_mid")[0])
    tracker.observe(
        frame(
            {
                "type": "error",
                "status": 500,
                "error": {"type": "server_error", "code": "server_error", "message": "oops"},
            }
        )
    )
    assert tracker.outcome is TurnOutcome.ERROR and tracker.response_id == "resp_mid"
    assert tracker.error is not None and tracker.error.status == 500


def test_non_json_frame_is_counted_and_ignored() -> None:
    tracker = TurnTracker()
    assert tracker.observe("not json at all") == ""
    assert tracker.events == 1 and not tracker.done


def test_ttft_is_known_after_the_first_frame() -> None:
    tracker = TurnTracker()
    assert tracker.ttft_s is None and tracker.first_event_at is None
    tracker.observe(text_turn()[0])
    assert tracker.ttft_s is not None and tracker.ttft_s >= 0.0


# -- UpstreamErrorInfo ------------------------------------------------------------------


def info(code: str | None, message: str, status: int | None = 400) -> UpstreamErrorInfo:
    return UpstreamErrorInfo(status=status, code=code, message=message, frame="{}")


@pytest.mark.parametrize(
    ("code", "message", "prev", "tool", "limit"),
    [
        ("previous_response_not_found", "Previous response was not found.", True, False, False),
        (None, "Previous response with id 'resp_1' not found.", True, False, False),
        (None, "No tool output found for function call call_abc.", False, True, False),
        (None, "no tool output found for custom tool call call_x", False, True, False),
        (
            "websocket_connection_limit_reached",
            "Responses websocket connection limit reached (60 minutes).",
            False,
            False,
            True,
        ),
        ("rate_limit_exceeded", "Rate limit reached", False, False, False),
        (None, "", False, False, False),
    ],
)
def test_error_info_classification(
    code: str | None, message: str, prev: bool, tool: bool, limit: bool
) -> None:
    err = info(code, message)
    assert (err.is_previous_not_found, err.is_tool_output_missing, err.is_connection_limit) == (
        prev,
        tool,
        limit,
    )


def test_error_info_from_peek_prefers_status_then_status_code() -> None:
    body = ErrorBody(code="c", message="m")
    both = UpstreamErrorInfo.from_peek(ErrorEventPeek("error", 429, 500, body), "raw")
    assert (both.status, both.code, both.message, both.frame) == (429, "c", "m", "raw")
    alias = UpstreamErrorInfo.from_peek(ErrorEventPeek("error", None, 503, body), b"raw")
    assert alias.status == 503 and alias.frame == b"raw"
    bare = UpstreamErrorInfo.from_peek(ErrorEventPeek("error"), "x")
    assert (bare.status, bare.code, bare.message) == (None, None, "")
    no_message = UpstreamErrorInfo.from_peek(
        ErrorEventPeek("error", 400, None, ErrorBody(code="x")), "y"
    )
    assert no_message.message == ""


def test_tracker_output_items_are_raw_bytes_of_the_frame() -> None:
    tracker = TurnTracker()
    frames = function_call_turn()
    for f in frames:
        tracker.observe(f)
    expected = json.loads(frames[-1])["response"]["output"]
    assert [msgspec.json.decode(bytes(raw)) for raw in tracker.output] == expected
