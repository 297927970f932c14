"""Server events of one response, built and encoded up front (the send loop only writes).

Shapes follow the real API: every event carries ``sequence_number`` (from 0); the
terminal event carries the full ``output`` and ``usage``. Error events use the wire
shape Codex parses (``status``, ``error.code``/``message``/``param``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import msgspec

from sim.model import Answer, Item, new_id

_encoder = msgspec.json.Encoder()


def encode(event: dict[str, Any]) -> str:
    return _encoder.encode(event).decode()


def stamp(frame: str) -> str:
    """Append ``sim_t_ns`` as the LAST field (bench/load.py relies on that position)."""
    return f'{frame[:-1]},"sim_t_ns":{time.time_ns()}}}'


@dataclass
class BuiltResponse:
    frames: list[str]  # encoded events; the last one is terminal
    types: list[str]  # event type per frame (SSE needs it)
    output: list[Item]
    response: dict[str, Any]  # the terminal response object (the HTTP JSON answer)


def usage(input_tokens: int, cached_tokens: int, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": min(cached_tokens, input_tokens)},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    }


def error_event(
    status: int,
    code: str | None,
    message: str,
    param: str | None = None,
    retry_after: float | None = None,
) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": "error",
        "status": status,
        "error": {
            "type": "invalid_request_error" if status < 500 else "server_error",
            "code": code,
            "message": message,
            "param": param,
        },
    }
    if retry_after is not None:
        event["headers"] = {"retry-after": f"{retry_after:g}"}
    return event


def previous_not_found(previous_response_id: str) -> dict[str, Any]:
    return error_event(
        400,
        "previous_response_not_found",
        f"Previous response with id '{previous_response_id}' not found.",
        "previous_response_id",
    )


def _text_events(item_id: str, index: int, answer: Answer) -> tuple[list[dict[str, Any]], Item]:
    text = answer.text or ""
    where = {"item_id": item_id, "output_index": index, "content_index": 0}
    started = {
        "id": item_id,
        "type": "message",
        "role": "assistant",
        "status": "in_progress",
        "content": [],
    }
    part = {"type": "output_text", "text": text, "annotations": []}
    events: list[dict[str, Any]] = [
        {"type": "response.output_item.added", "output_index": index, "item": started},
        {
            "type": "response.content_part.added",
            **where,
            "part": {"type": "output_text", "text": "", "annotations": []},
        },
    ]
    events.extend(
        {"type": "response.output_text.delta", **where, "delta": delta} for delta in answer.deltas
    )
    message = {**started, "status": "completed", "content": [part]}
    events += [
        {"type": "response.output_text.done", **where, "text": text},
        {"type": "response.content_part.done", **where, "part": part},
        {"type": "response.output_item.done", "output_index": index, "item": message},
    ]
    return events, message


def _chunks(text: str) -> list[str]:
    """Arguments stream in a few pieces, like the real API."""
    if len(text) < 4:
        return [text]
    step = -(-len(text) // 3)
    return [text[i : i + step] for i in range(0, len(text), step)]


def _call_events(call: Item, index: int) -> list[dict[str, Any]]:
    custom = call["type"] == "custom_tool_call"
    field, prefix = (
        ("input", "response.custom_tool_call_input")
        if custom
        else (
            "arguments",
            "response.function_call_arguments",
        )
    )
    where = {"item_id": call["id"], "output_index": index}
    started = {**call, field: "", "status": "in_progress"}
    events: list[dict[str, Any]] = [
        {"type": "response.output_item.added", "output_index": index, "item": started}
    ]
    events.extend({"type": f"{prefix}.delta", **where, "delta": d} for d in _chunks(call[field]))
    events.append({"type": f"{prefix}.done", **where, field: call[field]})
    events.append({"type": "response.output_item.done", "output_index": index, "item": call})
    return events


def _reasoning_events(index: int) -> tuple[list[dict[str, Any]], Item]:
    item = {
        "id": new_id("rs"),
        "type": "reasoning",
        "summary": [{"type": "summary_text", "text": "sim reasoning"}],
        "encrypted_content": "gAAAAAsim" + new_id("enc"),
    }
    return [
        {
            "type": "response.output_item.added",
            "output_index": index,
            "item": {**item, "summary": []},
        },
        {"type": "response.output_item.done", "output_index": index, "item": item},
    ], item


def build_response(
    response_id: str,
    body: dict[str, Any],
    answer: Answer,
    generate: bool,
    input_tokens: int,
    cached_tokens: int,
) -> BuiltResponse:
    """The whole event sequence of one response (a warm-up is created + completed only)."""
    base: dict[str, Any] = {
        "id": response_id,
        "object": "response",
        "created_at": int(time.time()),
        "status": "in_progress",
        "model": str(body.get("model") or "gpt-sim"),
        "output": [],
        "previous_response_id": body.get("previous_response_id"),
        "store": body.get("store", True) is not False,
        "error": None,
        "incomplete_details": None,
        "usage": None,
    }
    events: list[dict[str, Any]] = [{"type": "response.created", "response": base}]
    output: list[Item] = []
    if generate:
        events.append({"type": "response.in_progress", "response": base})
        if answer.reasoning:
            more, item = _reasoning_events(len(output))
            events += more
            output.append(item)
        for call in answer.calls:
            events += _call_events(call, len(output))
            output.append(call)
        if not answer.calls:
            more, message = _text_events(new_id("msg"), len(output), answer)
            events += more
            output.append(message)
    produced = "".join(c.get("arguments") or c.get("input") or "" for c in answer.calls)
    output_tokens = max(1, len(answer.text or produced) // 4) if generate else 0
    final: dict[str, Any] = {
        **base,
        "status": answer.terminal if generate else "completed",
        "output": output,
        "usage": usage(
            input_tokens if generate else 0, cached_tokens if generate else 0, output_tokens
        ),
    }
    if final["status"] == "failed":
        final["error"] = {"code": "server_error", "message": "The model failed (simulated)."}
    elif final["status"] == "incomplete":
        final["incomplete_details"] = {"reason": "max_output_tokens"}
    events.append({"type": f"response.{final['status']}", "response": final})
    frames: list[str] = []
    for seq, event in enumerate(events):
        event["sequence_number"] = seq
        frames.append(encode(event))
    return BuiltResponse(frames, [e["type"] for e in events], output, final)
