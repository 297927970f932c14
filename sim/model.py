"""The simulated model: what it answers (scripted by directives) and the API's input rules.

Directives live in the text of the LAST user message of the effective input, so tests
and the real Codex CLI (whose prompt we write) can script the answer. Several keys may
share one directive, and several directives may appear in one message:

    [[sim deltas=200]]                              number of text deltas (default 3)
    [[sim delta_bytes=20000]]                       pad each text delta to this many bytes
    [[sim delay_ms=5]]                              pause between events
    [[sim call exec_command {"cmd":"echo ok"}]]     answer with that function call
    [[sim custom apply_patch *** Begin Patch]]      answer with a custom tool call (raw input)
    [[sim calls=3]]                                 that many parallel calls (with call/custom)
    [[sim rounds=2]]                                call again until N rounds of outputs arrived
    [[sim reasoning=1]]                             put a reasoning item before the answer
    [[sim terminal=failed]]                         end with response.failed (or =incomplete)

Answers: when the effective input ends with tool outputs (and the rounds are done) the
text is ``tool said: <output> <output>…``; otherwise ``sim-answer: <first 40 chars of the
prompt, directives removed>`` followed by `` w1 w2 …`` (one word per extra delta).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from typing import Any

import msgspec

Item = dict[str, Any]

_DIRECTIVE = re.compile(r"\[\[sim\s+(.*?)\]\]", re.S)
CALL_TYPES = frozenset({"function_call", "custom_tool_call", "local_shell_call"})
OUTPUT_TYPES = frozenset({"function_call_output", "custom_tool_call_output"})
PROMPT_ECHO_CHARS = 40
TOOL_ECHO_CHARS = 1000


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


@dataclass
class Script:
    """What the last user message asks the simulated model to do."""

    deltas: int = 3
    delta_bytes: int = 0
    delay_ms: float = 0.0
    call_kind: str | None = None  # "function_call" | "custom_tool_call"
    call_name: str = ""
    call_args: str = "{}"
    calls: int = 1
    rounds: int = 1
    reasoning: bool = False
    terminal: str = "completed"  # "completed" | "failed" | "incomplete"


@dataclass
class StoredResponse:
    """A finished response as continuation state: its effective input and its output."""

    id: str
    context: list[Item]
    output: list[Item]
    input_tokens: int = 0
    output_tokens: int = 0

    def history(self) -> list[Item]:
        return self.context + self.output


@dataclass
class Answer:
    text: str | None = None
    deltas: list[str] = field(default_factory=list)
    calls: list[Item] = field(default_factory=list)
    reasoning: bool = False
    terminal: str = "completed"
    delay_ms: float = 0.0


def text_of(item: Item) -> str:
    content = item.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def _is_user_message(item: Item) -> bool:
    return item.get("type", "message") == "message" and item.get("role") == "user"


def last_user_index(items: list[Item]) -> int:
    for index in range(len(items) - 1, -1, -1):
        if _is_user_message(items[index]):
            return index
    return -1


def last_user_text(items: list[Item]) -> str:
    index = last_user_index(items)
    return text_of(items[index]) if index >= 0 else ""


def _apply_token(script: Script, token: str) -> None:
    key, _, value = token.partition("=")
    try:
        if key == "deltas":
            script.deltas = max(1, int(value))
        elif key == "delta_bytes":
            script.delta_bytes = max(0, int(value))
        elif key == "delay_ms":
            script.delay_ms = max(0.0, float(value))
        elif key == "calls":
            script.calls = max(1, int(value))
        elif key == "rounds":
            script.rounds = max(1, int(value))
        elif key == "reasoning":
            script.reasoning = value not in ("0", "false", "")
        elif key == "terminal" and value in ("completed", "failed", "incomplete"):
            script.terminal = value
    except ValueError:
        pass  # a malformed directive value is ignored, like any other prompt text


def parse_script(text: str) -> Script:
    script = Script()
    for body in _DIRECTIVE.findall(text):
        body = body.strip()
        head, _, rest = body.partition(" ")
        if head in ("call", "custom"):
            name, _, args = rest.strip().partition(" ")
            script.call_kind = "function_call" if head == "call" else "custom_tool_call"
            script.call_name = name
            script.call_args = args.strip() or ("{}" if head == "call" else "")
            continue
        for token in body.split():
            _apply_token(script, token)
    return script


def strip_directives(text: str) -> str:
    return " ".join(_DIRECTIVE.sub(" ", text).split())


def input_items(raw_input: Any) -> list[Item]:
    """The request's ``input`` as items (a bare string is one user message)."""
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
    if isinstance(raw_input, list) and all(isinstance(i, dict) for i in raw_input):
        return raw_input
    raise ValueError("Invalid type for 'input': expected a string or an array of input items.")


def pairing_error(context: list[Item]) -> str | None:
    """The upstream's own complaint about call/output pairing in an effective input, or None.

    Every call needs exactly one output with its ``call_id``, after it; every output needs
    an earlier call.
    """
    calls: dict[str, str] = {}
    answered: set[str] = set()
    for item in context:
        kind = item.get("type")
        call_id = item.get("call_id")
        if not isinstance(call_id, str):
            continue
        if kind in CALL_TYPES:
            calls[call_id] = kind
        elif kind in OUTPUT_TYPES:
            # Matched by call_id only: the API does not check the output's type against the call's.
            if call_id not in calls:
                what = "custom tool call" if kind == "custom_tool_call_output" else "function call"
                return f"No tool call found for {what} output with call_id {call_id}."
            if call_id in answered:
                return f"Duplicate tool output found for call_id {call_id}."
            answered.add(call_id)
    for call_id, kind in calls.items():
        if call_id not in answered:
            what = "custom tool call" if kind == "custom_tool_call" else "function call"
            return f"No tool output found for {what} {call_id}."
    return None


def first_call_id(items: list[Item]) -> str | None:
    for item in items:
        if item.get("type") in CALL_TYPES and isinstance(item.get("call_id"), str):
            return str(item["call_id"])
    return None


def _output_text(item: Item) -> str:
    output = item.get("output")
    if isinstance(output, str):
        return output
    if isinstance(output, list):  # structured outputs: a list of content parts
        return "".join(str(p.get("text", "")) for p in output if isinstance(p, dict))
    return "" if output is None else str(output)


def _new_calls(script: Script) -> list[Item]:
    calls: list[Item] = []
    for _ in range(script.calls):
        if script.call_kind == "custom_tool_call":
            calls.append(
                {
                    "type": "custom_tool_call",
                    "id": new_id("ctc"),
                    "call_id": new_id("call"),
                    "name": script.call_name,
                    "input": script.call_args,
                    "status": "completed",
                }
            )
        else:
            calls.append(
                {
                    "type": "function_call",
                    "id": new_id("fc"),
                    "call_id": new_id("call"),
                    "name": script.call_name,
                    "arguments": script.call_args,
                    "status": "completed",
                }
            )
    return calls


def _text_answer(text: str, script: Script, deltas: list[str] | None = None) -> Answer:
    parts = deltas or [text]
    if script.delta_bytes:
        parts = [d.ljust(script.delta_bytes, "x") for d in parts]
    return Answer(
        text="".join(parts),
        deltas=parts,
        reasoning=script.reasoning,
        terminal=script.terminal,
        delay_ms=script.delay_ms,
    )


def answer_for(context: list[Item]) -> Answer:
    """What the model says to this effective input (a full replay gets the same answer)."""
    prompt_index = last_user_index(context)
    script = parse_script(text_of(context[prompt_index]) if prompt_index >= 0 else "")
    tail: list[Item] = []
    for item in reversed(context):
        if item.get("type") not in OUTPUT_TYPES:
            break
        tail.append(item)
    if tail:
        after_prompt = context[prompt_index + 1 :]
        calls_seen = sum(1 for i in after_prompt if i.get("type") in CALL_TYPES)
        if script.call_kind and calls_seen // script.calls < script.rounds:
            return Answer(calls=_new_calls(script), delay_ms=script.delay_ms)
        said = " ".join(_output_text(o) for o in reversed(tail))[:TOOL_ECHO_CHARS]
        return _text_answer(f"tool said: {said}", script)
    if script.call_kind:
        return Answer(
            calls=_new_calls(script), reasoning=script.reasoning, delay_ms=script.delay_ms
        )
    prompt = strip_directives(text_of(context[prompt_index])) if prompt_index >= 0 else ""
    base = f"sim-answer: {prompt[:PROMPT_ECHO_CHARS]}"
    return _text_answer(base, script, [base] + [f" w{i}" for i in range(1, script.deltas)])


def estimate_tokens(items: list[Item]) -> int:
    return len(msgspec.json.encode(items)) // 4 if items else 0
