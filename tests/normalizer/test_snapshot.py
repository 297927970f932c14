"""Decoding the request snapshot: precise errors, raw fields, cheap re-encoding."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from normalizer import RequestDecodeError, decode_request, encode_request, item_from_raw, make_item


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (b"{not json", "malformed JSON"),
        (b"[1,2]", "request must be a JSON object"),
        (b'{"input": 5}', "field 'input' must be a string or an array"),
        (b'{"previous_response_id": 5}', "field 'previous_response_id' must be a string"),
        (b'{"store": "yes"}', "field 'store' must be a boolean"),
        (b'{"model": []}', "field 'model' must be a string"),
    ],
)
def test_decode_errors_are_precise(frame: bytes, message: str) -> None:
    with pytest.raises(RequestDecodeError, match=message):
        decode_request(frame)


def test_peeked_fields_and_defaults() -> None:
    snap = decode_request(
        '{"model":"gpt","store":false,"generate":false,"previous_response_id":null,"input":null}'
    )
    assert snap.type == "response.create"  # a missing type means response.create
    assert (snap.model, snap.store, snap.generate, snap.previous_response_id) == (
        "gpt",
        False,
        False,
        None,
    )
    assert snap.items == () and snap.input_present


def test_edits_are_pure_and_only_changed_fields_reencode() -> None:
    raw = b'{"type":"response.create","input":[{"type":"message","x":  1}],"previous_response_id":"r1","z":  [1, 2]}'
    snap = decode_request(raw)
    same = snap.with_previous_response_id("r1").with_items(snap.items).without_fields("nope")
    assert same is snap and encode_request(same) is raw
    changed = snap.with_previous_response_id(None)
    assert snap.previous_response_id == "r1"  # the original is untouched
    out = encode_request(changed)
    assert b'"previous_response_id"' not in out
    assert (
        b'{"type":"message","x":  1}' in out and b'"z":[1, 2]' in out
    )  # raw bytes kept, not re-encoded
    dropped = snap.without_fields("previous_response_id", "generate", "store")
    assert (
        dropped.previous_response_id is None and dropped.store is None and dropped.generate is None
    )
    added = snap.with_field("stream", b"true")
    assert json.loads(encode_request(added))["stream"] is True


def test_every_top_level_field_is_kept_in_order_as_its_raw_bytes() -> None:
    raw = b'{"z":  [1, 2],"type":"response.create","model":"m","input":"hi","a":{"b":  null}}'
    snap = decode_request(raw)
    assert list(snap.fields) == ["z", "type", "model", "input", "a"]
    assert bytes(snap.fields["z"]) == b"[1, 2]" and bytes(snap.fields["a"]) == b'{"b":  null}'
    edited = snap.with_field("stream", b"true")
    assert list(edited.fields) == ["z", "type", "model", "input", "a", "stream"]
    assert list(snap.fields) == ["z", "type", "model", "input", "a"]  # the original is intact


def test_an_explicit_null_previous_response_id_is_dropped_when_asked() -> None:
    snap = decode_request(b'{"previous_response_id":null,"input":[]}')
    assert snap.previous_response_id is None
    out = encode_request(snap.with_previous_response_id(None))
    assert json.loads(out) == {"input": []}


def test_items_peek_type_and_call_id() -> None:
    item = item_from_raw(b'{"type":"function_call_output","call_id":"c1","output":"x"}')
    assert (item.type, item.call_id) == ("function_call_output", "c1")
    odd = item_from_raw(b'"just a string"')
    assert odd.type == "" and odd.call_id is None
    numeric = item_from_raw(b'{"type":"x","call_id":7}')
    assert numeric.call_id is None
    made = make_item({"type": "function_call_output", "call_id": "c2", "output": "aborted"})
    assert json.loads(bytes(made.raw))["call_id"] == "c2"


# -- hostile input: every failure is a RequestDecodeError with a short reason --------


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b'{"input":' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nesting is too deep"),
        (b'{"input":[{"type":' + b"{" * 5000 + b"}" * 5000 + b"}]}", "malformed JSON"),
        (b'{"input":[{"content":' + b"[" * 5000 + b"]" * 5000 + b"}]}", "nesting is too deep"),
        ('{"input":"\ud800"}', "not valid UTF-8"),
        (b'{"input":"\xff"}', "Invalid UTF-8"),
        (b'{"model":NaN}', "malformed JSON"),
        (b'{"input":5}', "must be a string or an array"),
        (b'{"model":[1]}', "must be a string"),
    ],
)
def test_undecodable_requests_are_client_errors(frame: bytes | str, reason: str) -> None:
    with pytest.raises(RequestDecodeError) as err:
        decode_request(frame)
    assert reason in str(err.value)
    assert len(str(err.value)) < 200


def test_input_item_count_is_capped_during_decode() -> None:
    from normalizer.snapshot import MAX_INPUT_ITEMS

    at_cap = b'{"input":[' + b",".join([b"{}"] * MAX_INPUT_ITEMS) + b"]}"
    assert len(decode_request(at_cap).items) == MAX_INPUT_ITEMS
    over = b'{"input":[' + b",".join([b"{}"] * (MAX_INPUT_ITEMS + 1)) + b"]}"
    with pytest.raises(RequestDecodeError, match="more than"):
        decode_request(over)


@settings(max_examples=200, deadline=None)
@given(
    kind=st.sampled_from(
        [
            "message",
            "reasoning",
            "function_call",
            "function_call_output",
            "custom_tool_call",
            "web_search_call",
            "tool_search_output",
            "mes\\u0073age",
            'we"ird',
        ]
    ),
    with_id=st.booleans(),
    call_id=st.one_of(st.none(), st.text(min_size=1, max_size=8)),
    text=st.text(max_size=300),
)
def test_the_head_shortcut_reads_what_a_full_decode_reads(
    kind: str, with_id: bool, call_id: str | None, text: str
) -> None:
    """Item types read from an item's first bytes agree with decoding the whole item."""
    body: dict[str, object] = {"id": "it_1"} if with_id else {}
    body["type"] = json.loads(f'"{kind}"') if "\\u" in kind else kind
    if call_id is not None:
        body["call_id"] = call_id
    body["content"] = text
    raw = json.dumps(body, separators=(",", ":")).encode()
    item = item_from_raw(raw)
    full = json.loads(raw)
    assert item.type == full["type"]
    if item.type.endswith(("_call", "_output")):
        assert item.call_id == full.get("call_id")
    assert bytes(item.raw) == raw
