"""Event sequences as built before sending (pure)."""

from __future__ import annotations

import json

from sim.events import build_response, error_event, stamp
from sim.model import Answer, answer_for


def test_warm_up_is_created_then_completed_with_nothing() -> None:
    built = build_response("resp_w", {"model": "m", "store": False}, Answer(), False, 50, 10)
    assert built.types == ["response.created", "response.completed"]
    assert built.output == [] and built.response["output"] == []
    assert built.response["usage"]["total_tokens"] == 0
    assert built.response["store"] is False


def test_reasoning_item_precedes_the_message() -> None:
    answer = answer_for([{"role": "user", "content": "[[sim reasoning=1]]"}])
    built = build_response("resp_r", {}, answer, True, 10, 0)
    assert [i["type"] for i in built.output] == ["reasoning", "message"]
    assert built.output[0]["encrypted_content"]
    events = [json.loads(f) for f in built.frames]
    added = [e["output_index"] for e in events if e["type"] == "response.output_item.added"]
    assert added == [0, 1]
    assert built.response["usage"]["input_tokens_details"]["cached_tokens"] == 0


def test_error_event_carries_retry_after_in_headers() -> None:
    event = error_event(429, "rate_limit_exceeded", "slow down", retry_after=1.5)
    assert event["headers"] == {"retry-after": "1.5"}
    assert event["error"]["type"] == "invalid_request_error"
    assert error_event(503, None, "x")["error"]["type"] == "server_error"


def test_stamp_appends_sim_t_ns_last() -> None:
    stamped = json.loads(stamp('{"type":"x","sequence_number":3}'))
    assert list(stamped) == ["type", "sequence_number", "sim_t_ns"]
    assert isinstance(stamped["sim_t_ns"], int)
