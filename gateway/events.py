"""Selective peeks at client messages and upstream events.

The hot path never decodes a whole event: ``event_type`` reads the ``type`` from the
frame's prefix (the API always writes it first) and falls back to a one-field typed
decode. Only the few events that carry continuation state (created, terminal, error)
get a typed decode of the fields the gateway needs.
"""

from __future__ import annotations

import re
from typing import Final

import msgspec

TERMINAL_TYPES: Final = frozenset(
    {
        "response.completed",
        "response.failed",
        "response.incomplete",
        "response.cancelled",
        "response.canceled",
        "response.done",
        "error",
    }
)
RESPONSE_TERMINAL_TYPES: Final = TERMINAL_TYPES - {"error"}
CALL_ITEM_TYPES: Final = frozenset(
    {"function_call", "custom_tool_call", "local_shell_call", "tool_search_call"}
)

_PREFIX = '{"type":"'
_PREFIX_B = b'{"type":"'


class _TypePeek(msgspec.Struct):
    type: str = ""


_type_decoder = msgspec.json.Decoder(_TypePeek)
# Event types seen on every turn, by their bytes: a frame delivered as bytes needs no decode.
_KNOWN_NAMES: Final = {
    name.encode(): name
    for name in (
        *TERMINAL_TYPES,
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.output_item.done",
        "response.content_part.added",
        "response.content_part.done",
        "response.output_text.delta",
        "response.output_text.done",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_part.added",
        "response.reasoning_summary_part.done",
        "response.reasoning_summary_text.done",
    )
}


def event_type(frame: str | bytes) -> str:
    """The ``type`` of a JSON event; "" when absent. Raises msgspec.DecodeError if not JSON."""
    if isinstance(frame, str):
        if frame.startswith(_PREFIX):
            end = frame.find('"', 9, 80)
            if end > 0 and frame.find("\\", 9, end) < 0:
                return frame[9:end]
    elif frame.startswith(_PREFIX_B):
        end = frame.find(b'"', 9, 80)
        if end > 0 and frame.find(b"\\", 9, end) < 0:
            name = frame[9:end]
            return _KNOWN_NAMES.get(name) or name.decode()
    return _type_decoder.decode(frame).type


class ErrorBody(msgspec.Struct):
    type: str | None = None
    code: str | None = None
    message: str | None = None
    param: str | None = None


class UsagePeek(msgspec.Struct):
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0


class OutputItemPeek(msgspec.Struct):
    type: str = ""
    call_id: str | None = None
    execution: str | None = None


class ResponsePeek(msgspec.Struct):
    id: str = ""
    status: str = ""
    model: str | None = None
    output: list[msgspec.Raw] = []
    usage: UsagePeek | None = None
    error: ErrorBody | None = None


class ResponseEventPeek(msgspec.Struct):
    type: str = ""
    response: ResponsePeek | None = None


class ErrorEventPeek(msgspec.Struct):
    type: str = ""
    status: int | None = None
    status_code: int | None = None
    error: ErrorBody | None = None
    headers: dict[str, str] | None = None  # e.g. retry-after on a 429


_response_decoder = msgspec.json.Decoder(ResponseEventPeek)
_error_decoder = msgspec.json.Decoder(ErrorEventPeek)
_item_decoder = msgspec.json.Decoder(OutputItemPeek)


def peek_response(frame: str | bytes) -> ResponsePeek:
    peek = _response_decoder.decode(frame)
    return peek.response or ResponsePeek()


_response_object_decoder = msgspec.json.Decoder(ResponsePeek)


def peek_response_object(body: str | bytes) -> ResponsePeek:
    """A response object itself (the JSON body of a non-streamed POST /v1/responses)."""
    return _response_object_decoder.decode(body)


def peek_error(frame: str | bytes) -> ErrorEventPeek:
    return _error_decoder.decode(frame)


# How far into an output item its top-level ``type`` is looked for without a decode, and
# the compact shapes trusted there: ``{"type":"...`` or ``{"id":"...","type":"...`` (the
# upstream's own order). No escapes, so the match is exactly the top-level key.
_ITEM_HEAD = 160
_ITEM_HEAD_TYPE = re.compile(rb'\{(?:"id":"[^"\\]*",)?"type":"([^"\\]*)"')


def item_type_from_head(raw: msgspec.Raw) -> str | None:
    """The top-level ``type`` of an output item read from its first bytes; None when its
    JSON does not start in a trusted shape. A 20 KB message item costs no decode."""
    match = _ITEM_HEAD_TYPE.match(memoryview(raw)[:_ITEM_HEAD])
    return None if match is None else match.group(1).decode()


def pending_calls(output: list[msgspec.Raw]) -> dict[str, str]:
    """call_id -> call item type for every tool call in a response's output. Items whose
    type shows in their first bytes and is not a call are skipped undecoded."""
    calls: dict[str, str] = {}
    for raw in output:
        head_type = item_type_from_head(raw)
        if head_type is not None and head_type not in CALL_ITEM_TYPES:
            continue
        item = _item_decoder.decode(raw)
        # A server-executed tool search was answered upstream: the client owes no output.
        if item.type in CALL_ITEM_TYPES and item.call_id and item.execution != "server":
            calls[item.call_id] = item.type
    return calls


# -- frames the gateway itself sends to clients ------------------------------------


class _ErrorDetail(msgspec.Struct, omit_defaults=True):
    code: str | None
    message: str
    type: str  # always written: omit_defaults must only drop a null param
    param: str | None = None


class _ErrorEvent(msgspec.Struct, omit_defaults=True):
    type: str
    status: int
    error: _ErrorDetail
    headers: dict[str, str] | None = None


_encoder = msgspec.json.Encoder()


def error_event(
    status: int,
    code: str | None,
    message: str,
    *,
    error_type: str = "invalid_request_error",
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> str:
    """An ``error`` event in the upstream's own shape (``headers`` as the upstream sends
    them, e.g. ``retry-after``, which Codex reads)."""
    event = _ErrorEvent("error", status, _ErrorDetail(code, message, error_type, param), headers)
    return _encoder.encode(event).decode()


def error_json(status: int, code: str | None, message: str, error_type: str) -> bytes:
    """HTTP JSON error body in the OpenAI shape."""
    body = {"error": {"message": message, "type": error_type, "code": code, "param": None}}
    return _encoder.encode(body)


# -- upstream failures as clients may see them --------------------------------------
#
# The upstream's own words about an account (a 401 quoting part of the key, a quota
# message) and transport details (host, port, resolver errors) go to the log only;
# clients get a gateway error that names the account id, which operators can act on.

ACCOUNT_ERROR_CODES: Final = frozenset(
    {
        "invalid_api_key",
        "insufficient_quota",
        "account_deactivated",
        "organization_deactivated",
        "invalid_organization",
        "billing_hard_limit_reached",
        "unsupported_country_region_territory",
    }
)
ACCOUNT_ERROR_STATUSES: Final = frozenset({401, 402, 403})


def is_account_error(status: int | None, code: str | None) -> bool:
    """True when the upstream refused the gateway's account rather than the request."""
    return status in ACCOUNT_ERROR_STATUSES or (code is not None and code in ACCOUNT_ERROR_CODES)


def account_error_message(account_id: str, status: int | None, code: str | None) -> str:
    what = f"HTTP {status}" if status else (code or "an account error")
    return (
        f"the upstream refused gateway account {account_id!r} ({what}); "
        "the gateway operator must check that account"
    )


def account_error_event(account_id: str, status: int | None, code: str | None) -> str:
    """The error event a client gets instead of the upstream's account error."""
    return error_event(
        502,
        "upstream_account_error",
        account_error_message(account_id, status, code),
        error_type="server_error",
    )


def transport_error_message(what: str = "upstream") -> str:
    """A transport failure, without hosts, ports or library text (those are logged)."""
    return f"{what} unreachable or connection failed; retry shortly"


_fields_decoder = msgspec.json.Decoder(dict[str, msgspec.Raw])
_error_body_decoder = msgspec.json.Decoder(ErrorBody | None)


def sanitize_upstream_error(frame: str | bytes, etype: str, account_id: str) -> str | bytes:
    """``frame`` as a client may see it; unchanged unless it is an account error.

    Cheap for the hot path: only ``error`` and ``response.failed`` frames are decoded.
    An account ``error`` event becomes a gateway error naming the account; a
    ``response.failed`` keeps its shape with its ``error`` object replaced.
    """
    if etype == "error":
        try:
            peek = peek_error(frame)
        except (msgspec.DecodeError, RecursionError):
            return frame
        status = peek.status if peek.status is not None else peek.status_code
        code = peek.error.code if peek.error else None
        if is_account_error(status, code):
            return account_error_event(account_id, status, code)
        return frame
    if etype != "response.failed":
        return frame
    try:
        fields = _fields_decoder.decode(frame)
        response = _fields_decoder.decode(fields["response"]) if "response" in fields else {}
        error = _error_body_decoder.decode(response["error"]) if "error" in response else None
    except (msgspec.DecodeError, RecursionError):
        return frame
    code = error.code if error else None
    if not is_account_error(None, code):
        return frame
    replacement = {
        "code": "upstream_account_error",
        "message": account_error_message(account_id, None, code),
    }
    response["error"] = msgspec.Raw(_encoder.encode(replacement))
    fields["response"] = msgspec.Raw(_encoder.encode(response))
    out = _encoder.encode(fields)
    return out.decode() if isinstance(frame, str) else out
