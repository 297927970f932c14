"""What clients may see of upstream failures: no key fragments, hosts or ports."""

from __future__ import annotations

import json

from gateway.events import (
    is_account_error,
    sanitize_upstream_error,
    transport_error_message,
)

KEY_TEXT = "Incorrect API key provided: sk-abc***xyz"


def _error_frame(status: int, code: str) -> str:
    return json.dumps(
        {"type": "error", "status": status, "error": {"code": code, "message": KEY_TEXT}}
    )


def test_account_error_event_names_the_account_not_the_key() -> None:
    out = sanitize_upstream_error(_error_frame(401, "invalid_api_key"), "error", "acct-a")
    event = json.loads(out)
    assert event["type"] == "error"
    assert event["status"] == 502
    assert event["error"]["code"] == "upstream_account_error"
    assert "acct-a" in event["error"]["message"]
    assert "sk-" not in str(out)


def test_quota_error_is_an_account_error_even_without_a_status() -> None:
    frame = json.dumps({"type": "error", "error": {"code": "insufficient_quota", "message": "x"}})
    event = json.loads(sanitize_upstream_error(frame, "error", "acct-b"))
    assert event["error"]["code"] == "upstream_account_error"


def test_request_errors_are_relayed_byte_for_byte() -> None:
    frame = _error_frame(400, "invalid_value").encode()
    assert sanitize_upstream_error(frame, "error", "acct-a") is frame
    delta = b'{"type":"response.output_text.delta","delta":"sk-"}'
    assert sanitize_upstream_error(delta, "response.output_text.delta", "acct-a") is delta


def test_failed_response_keeps_its_shape_with_the_error_replaced() -> None:
    frame = json.dumps(
        {
            "type": "response.failed",
            "sequence_number": 7,
            "response": {
                "id": "resp_1",
                "status": "failed",
                "error": {"code": "insufficient_quota", "message": KEY_TEXT},
            },
        }
    )
    event = json.loads(sanitize_upstream_error(frame, "response.failed", "acct-a"))
    assert event["sequence_number"] == 7
    assert event["response"]["id"] == "resp_1"
    assert event["response"]["error"]["code"] == "upstream_account_error"
    assert "sk-" not in json.dumps(event)


def test_undecodable_error_frames_are_left_alone() -> None:
    deep = '{"type":"error","error":' + "[" * 5000 + "]" * 5000 + "}"
    assert sanitize_upstream_error(deep, "error", "acct-a") == deep


def test_account_error_classification() -> None:
    assert is_account_error(401, None) and is_account_error(403, None)
    assert is_account_error(None, "invalid_api_key")
    assert not is_account_error(429, "rate_limit_exceeded")
    assert not is_account_error(400, None)


def test_transport_message_names_no_host() -> None:
    assert ":" not in transport_error_message() and "127." not in transport_error_message()
