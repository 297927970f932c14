"""The request snapshot: a ``response.create`` frame decoded once.

The top level is kept as ``dict[str, msgspec.Raw]`` (every field, in order, as raw
bytes) and the input as raw items with a tiny typed peek (``type``, ``call_id``).
Unknown fields and item types survive byte-identical; an unchanged request is sent as
the very bytes that came in, and a changed one re-encodes only what changed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated, Any

import msgspec

# Bounds on what one request may make us build: msgspec stops deep nesting itself
# (RecursionError), and the item count is checked while the array is decoded.
MAX_INPUT_ITEMS = 100_000

_top_decoder = msgspec.json.Decoder(dict[str, msgspec.Raw])
_encoder = msgspec.json.Encoder()


class RequestDecodeError(ValueError):
    """The frame is not a usable request; the message says precisely why."""


class _ItemPeek(msgspec.Struct):
    type: str = ""
    call_id: str | None = None


_item_decoder = msgspec.json.Decoder(_ItemPeek)


class Item(msgspec.Struct, frozen=True):
    raw: msgspec.Raw
    type: str
    call_id: str | None = None


# An item's top-level type is read from its first bytes when the JSON starts in one of
# these compact shapes (no escapes, so the match is exactly the top-level key): a 20 KB
# message then costs no decode. Only types that can carry a call id are decoded.
_HEAD = 160
_HEAD_TYPE = re.compile(rb'\{(?:"id":"[^"\\]*",)?"type":"([^"\\]*)"')


def item_from_raw(raw: msgspec.Raw | bytes) -> Item:
    data = raw if isinstance(raw, msgspec.Raw) else msgspec.Raw(raw)
    head = _HEAD_TYPE.match(memoryview(data)[:_HEAD])
    if head is not None:
        kind = head.group(1).decode()
        if not kind.endswith(("_call", "_output")):
            return Item(data, kind)
    try:
        peek = _item_decoder.decode(data)
    except msgspec.DecodeError:
        return Item(data, "")  # not an object: forwarded untouched
    return Item(data, peek.type, peek.call_id if isinstance(peek.call_id, str) else None)


def make_item(obj: dict[str, Any]) -> Item:
    """A synthetic item (e.g. an injected aborted output)."""
    call_id = obj.get("call_id")
    return Item(
        msgspec.Raw(_encoder.encode(obj)),
        str(obj.get("type", "")),
        call_id if isinstance(call_id, str) else None,
    )


class RequestSnapshot(msgspec.Struct, frozen=True):
    # The frame as it came: a WebSocket text frame's str (decoded as is: copying it into
    # bytes would cost a fresh allocation per turn that the transcript then keeps), or
    # an HTTP body's bytes. Items and fields are raw views into it.
    raw: str | bytes
    items: tuple[Item, ...]
    type: str
    model: str | None
    previous_response_id: str | None
    store: bool | None
    generate: bool | None
    input_is_string: bool
    input_present: bool
    changed: bool = False
    # The top-level fields as edited; None while they are those of ``raw`` (decoded from
    # it only when an edit or a re-encode needs them: an unchanged request never does).
    edited_fields: dict[str, msgspec.Raw] | None = None

    @property
    def fields(self) -> dict[str, msgspec.Raw]:
        """Every top-level field, in order, as raw JSON."""
        if self.edited_fields is not None:
            return self.edited_fields
        return _top_decoder.decode(self.raw)  # cannot fail: the whole frame decoded once

    def with_previous_response_id(self, value: str | None) -> RequestSnapshot:
        if value is not None and value == self.previous_response_id:
            return self
        current = self.fields  # one decode of the frame, when it is the frame's
        if (
            value is None
            and self.previous_response_id is None
            and "previous_response_id" not in current
        ):
            return self
        fields = dict(current)
        if value is None:
            fields.pop("previous_response_id", None)
        else:
            fields["previous_response_id"] = msgspec.Raw(_encoder.encode(value))
        return msgspec.structs.replace(
            self, edited_fields=fields, previous_response_id=value, changed=True
        )

    def with_items(self, items: Sequence[Item]) -> RequestSnapshot:
        items = tuple(items)
        if items == self.items and not self.input_is_string:
            return self
        return msgspec.structs.replace(
            self, items=items, input_is_string=False, input_present=True, changed=True
        )

    def without_fields(self, *names: str) -> RequestSnapshot:
        current = self.fields
        if not any(name in current for name in names):
            return self
        fields = {k: v for k, v in current.items() if k not in names}
        updates: dict[str, Any] = {"edited_fields": fields, "changed": True}
        if "previous_response_id" in names:
            updates["previous_response_id"] = None
        if "generate" in names:
            updates["generate"] = None
        if "store" in names:
            updates["store"] = None
        return msgspec.structs.replace(self, **updates)

    def with_field(self, name: str, raw_json: bytes) -> RequestSnapshot:
        fields = dict(self.fields)
        fields[name] = msgspec.Raw(raw_json)
        return msgspec.structs.replace(self, edited_fields=fields, changed=True)


class _Head(msgspec.Struct):
    """The fields the gateway reads, typed, and the input's items as raw JSON: the whole
    frame is checked and split in this one decode. Other fields stay in ``raw``."""

    type: str | None = None
    model: str | None = None
    previous_response_id: str | None = None
    store: bool | None = None
    generate: bool | None = None
    input: (
        Annotated[list[msgspec.Raw], msgspec.Meta(max_length=MAX_INPUT_ITEMS)]
        | str
        | msgspec.UnsetType
        | None
    ) = msgspec.UNSET


_head_decoder = msgspec.json.Decoder(_Head)
# What each typed field must be, for the error a client sees.
_KINDS = {
    "type": "a string",
    "model": "a string",
    "previous_response_id": "a string",
    "store": "a boolean",
    "generate": "a boolean",
}
_AT_FIELD = re.compile(r"- at `\$\.([A-Za-z_]+)`")


def decode_request(frame: bytes | str) -> RequestSnapshot:
    """Decode a request frame; any frame that cannot be used raises RequestDecodeError."""
    try:
        head = _head_decoder.decode(frame)
        items = _items_of(head.input)
    except UnicodeEncodeError:
        raise RequestDecodeError("request text is not valid UTF-8 (lone surrogate)") from None
    except RecursionError:
        raise RequestDecodeError("JSON nesting is too deep") from None
    except msgspec.ValidationError as exc:
        raise _invalid(str(exc)) from None
    except msgspec.DecodeError as exc:
        raise RequestDecodeError(f"malformed JSON: {exc}") from None
    return RequestSnapshot(
        raw=frame,
        items=items,
        type=head.type or "response.create",
        model=head.model,
        previous_response_id=head.previous_response_id,
        store=head.store,
        generate=head.generate,
        input_is_string=isinstance(head.input, str),
        input_present=head.input is not msgspec.UNSET,
    )


def _items_of(value: list[msgspec.Raw] | str | msgspec.UnsetType | None) -> tuple[Item, ...]:
    if isinstance(value, list):
        return tuple(item_from_raw(raw) for raw in value)
    if isinstance(value, str):
        return (
            make_item(
                {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": value}],
                }
            ),
        )
    return ()


def _invalid(message: str) -> RequestDecodeError:
    """A precise message for a well-formed frame of the wrong shape."""
    at = _AT_FIELD.search(message)
    name = at.group(1) if at is not None else None
    if name == "input":
        if "length <=" in message:
            return RequestDecodeError(f"field 'input' has more than {MAX_INPUT_ITEMS} items")
        return RequestDecodeError("field 'input' must be a string or an array")
    if name in _KINDS:
        return RequestDecodeError(f"field {name!r} must be {_KINDS[name]}")
    if message.startswith("Expected `object`") and at is None:
        return RequestDecodeError("request must be a JSON object")
    return RequestDecodeError(f"invalid request: {message}")


def _encode_items(items: tuple[Item, ...]) -> msgspec.Raw:
    return msgspec.Raw(b"[" + b",".join(memoryview(item.raw) for item in items) + b"]")


def encode_request(snap: RequestSnapshot) -> str | bytes:
    """The original frame when nothing changed; else only changed fields are re-encoded."""
    if not snap.changed:
        return snap.raw
    fields = dict(snap.fields)
    if not snap.input_is_string and (snap.input_present or snap.items):
        fields["input"] = _encode_items(snap.items)
    return _encoder.encode(fields)


def encode_request_bytes(snap: RequestSnapshot) -> bytes:
    """``encode_request`` as bytes (an HTTP body)."""
    encoded = encode_request(snap)
    return encoded.encode() if isinstance(encoded, str) else encoded
