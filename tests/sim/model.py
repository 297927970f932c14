"""The simulated model: what it answers (scripted by directives) and the API's rules.

Directives live in the text of the last user message, so tests and the real Codex CLI
(whose prompt we write) can script the answer:

    [[sim deltas=200]]            number of text deltas (default 3)
    [[sim delta_bytes=20000]]     pad each delta to this many bytes
    [[sim delay_ms=5]]            pause between events
    [[sim call exec_command {"cmd":"echo ok"}]]   answer with that function call
    [[sim calls=3]]               that many parallel calls

When the input ends with outputs for the previous calls, the answer is the text
``tool said: <output>``. Otherwise it is ``sim-answer: <the prompt>``.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

_DIRECTIVE = re.compile(r"\[\[sim\s+(.*?)\]\]", re.S)
CALL_TYPES = {"function_call", "custom_tool_call", "local_shell_call"}
OUTPUT_TYPES = {"function_call_output", "custom_tool_call_output"}


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


@dataclass
class Script:
    deltas: int = 3
    delta_bytes: int = 0
    delay_ms: float = 0.0
    call_name: str | None = None
    call_args: str = "{}"
    calls: int = 1


@dataclass
class StoredResponse:
    id: str
    context: list[dict[str, Any]]  # the effective input of the request
    output: list[dict[str, Any]]


@dataclass
class Answer:
    text: str | None = None
    deltas: list[str] = field(default_factory=list)
    calls: list[dict[str, Any]] = field(default_factory=list)


def _text_of(item: dict[str, Any]) -> str:
    content = item.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def last_user_text(items: list[dict[str, Any]]) -> str:
    for item in reversed(items):
        if item.get("type", "message") == "message" and item.get("role") == "user":
            return _text_of(item)
    return ""


def parse_script(text: str) -> Script:
    script = Script()
    for body in _DIRECTIVE.findall(text):
        body = body.strip()
        if body.startswith("call "):
            rest = body[5:].strip()
            name, _, args = rest.partition(" ")
            script.call_name = name
            script.call_args = args.strip() or "{}"
            continue
        for token in body.split():
            key, _, value = token.partition("=")
            if key == "deltas":
                script.deltas = max(1, int(value))
            elif key == "delta_bytes":
                script.delta_bytes = int(value)
            elif key == "delay_ms":
                script.delay_ms = float(value)
            elif key == "calls":
                script.calls = max(1, int(value))
    return script


def input_items(raw_input: Any) -> list[dict[str, Any]]:
    if raw_input is None:
        return []
    if isinstance(raw_input, str):
        return [
            {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": raw_input}],
            }
        ]
    if isinstance(raw_input, list):
        return [i for i in raw_input if isinstance(i, dict)]
    raise ValueError("input must be a string or an array")


def pairing_error(context: list[dict[str, Any]]) -> str | None:
    """The upstream's own complaint about call/output pairing, or None."""
    calls: dict[str, str] = {}
    outputs: set[str] = set()
    for item in context:
        kind = item.get("type")
        call_id = item.get("call_id")
        if kind in CALL_TYPES and isinstance(call_id, str):
            calls[call_id] = kind
        elif kind in OUTPUT_TYPES and isinstance(call_id, str):
            if call_id not in calls:
                return f"No tool call found for function call output with call_id {call_id}."
            outputs.add(call_id)
    for call_id, kind in calls.items():
        if call_id not in outputs:
            what = "custom tool call" if kind == "custom_tool_call" else "function call"
            return f"No tool output found for {what} {call_id}."
    return None


def answer_for(context: list[dict[str, Any]], new_items: list[dict[str, Any]]) -> Answer:
    # The answer depends on the effective input (a full replay carries the whole history):
    # when it ends with tool outputs, the model reads them instead of calling again.
    tail_outputs = []
    for item in reversed(context):
        if item.get("type") in OUTPUT_TYPES:
            tail_outputs.append(item)
        else:
            break
    if tail_outputs:
        said = " ".join(str(o.get("output", "")) for o in reversed(tail_outputs))
        text = f"tool said: {said}"
        return Answer(text=text, deltas=[text])
    prompt = last_user_text(context)
    script = parse_script(prompt)
    if script.call_name:
        calls = [
            {
                "type": "function_call",
                "id": new_id("fc"),
                "call_id": new_id("call"),
                "name": script.call_name,
                "arguments": script.call_args,
                "status": "completed",
            }
            for _ in range(script.calls)
        ]
        return Answer(calls=calls)
    clean = _DIRECTIVE.sub("", prompt).strip()
    base = f"sim-answer: {clean[:60]}"
    deltas = [base] + [f" w{i}" for i in range(1, script.deltas)]
    if script.delta_bytes:
        deltas = [d.ljust(script.delta_bytes, "x") for d in deltas]
    return Answer(text="".join(deltas), deltas=deltas)


def usage(context: list[dict[str, Any]], text: str) -> dict[str, Any]:
    inp = max(1, len(json.dumps(context)) // 4)
    out = max(1, len(text) // 4)
    return {
        "input_tokens": inp,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": out,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": inp + out,
    }


def response_events(
    response_id: str, model: str, answer: Answer, context: list[dict[str, Any]], generate: bool
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The full event sequence of one response, and its output items."""
    base = {"id": response_id, "object": "response", "created_at": 0, "model": model, "output": []}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": {**base, "status": "in_progress"}},
    ]
    output: list[dict[str, Any]] = []
    if generate:
        events.append(
            {"type": "response.in_progress", "response": {**base, "status": "in_progress"}}
        )
        if answer.calls:
            for index, call in enumerate(answer.calls):
                started = {**call, "arguments": "", "status": "in_progress"}
                events.append(
                    {"type": "response.output_item.added", "output_index": index, "item": started}
                )
                events.append(
                    {
                        "type": "response.function_call_arguments.delta",
                        "item_id": call["id"],
                        "output_index": index,
                        "delta": call["arguments"],
                    }
                )
                events.append(
                    {
                        "type": "response.function_call_arguments.done",
                        "item_id": call["id"],
                        "output_index": index,
                        "arguments": call["arguments"],
                    }
                )
                events.append(
                    {"type": "response.output_item.done", "output_index": index, "item": call}
                )
                output.append(call)
        else:
            text = answer.text or ""
            item_id = new_id("msg")
            part0 = {"type": "output_text", "text": "", "annotations": []}
            events.append(
                {
                    "type": "response.output_item.added",
                    "output_index": 0,
                    "item": {
                        "id": item_id,
                        "type": "message",
                        "role": "assistant",
                        "status": "in_progress",
                        "content": [],
                    },
                }
            )
            events.append(
                {
                    "type": "response.content_part.added",
                    "item_id": item_id,
                    "output_index": 0,
                    "content_index": 0,
                    "part": part0,
                }
            )
            for delta in answer.deltas:
                events.append(
                    {
                        "type": "response.output_text.delta",
                        "item_id": item_id,
                        "output_index": 0,
                        "content_index": 0,
                        "delta": delta,
                    }
                )
            part = {"type": "output_text", "text": text, "annotations": []}
            events.append(
                {
                    "type": "response.output_text.done",
                    "item_id": item_id,
                    "output_index": 0,
                    "content_index": 0,
                    "text": text,
                }
            )
            events.append(
                {
                    "type": "response.content_part.done",
                    "item_id": item_id,
                    "output_index": 0,
                    "content_index": 0,
                    "part": part,
                }
            )
            message = {
                "id": item_id,
                "type": "message",
                "role": "assistant",
                "status": "completed",
                "content": [part],
            }
            events.append({"type": "response.output_item.done", "output_index": 0, "item": message})
            output.append(message)
    text_out = answer.text or "".join(c.get("arguments", "") for c in answer.calls)
    done = {
        **base,
        "status": "completed",
        "output": output,
        "usage": usage(context, text_out if generate else ""),
    }
    events.append({"type": "response.completed", "response": done})
    for seq, event in enumerate(events):
        event["sequence_number"] = seq
    return events, output


def error_event(
    status: int, code: str | None, message: str, param: str | None = None
) -> dict[str, Any]:
    return {
        "type": "error",
        "status": status,
        "error": {
            "type": "invalid_request_error" if status < 500 else "server_error",
            "code": code,
            "message": message,
            "param": param,
        },
    }
