"""Directives, the scripted answers and the pairing rule (pure functions)."""

from __future__ import annotations

from typing import Any

import pytest

from sim.model import answer_for, input_items, pairing_error, parse_script

Item = dict[str, Any]


def user(text: str) -> Item:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


def call(call_id: str, kind: str = "function_call") -> Item:
    return {"type": kind, "call_id": call_id, "name": "exec_command", "arguments": "{}"}


def out(call_id: str, kind: str = "function_call_output") -> Item:
    return {"type": kind, "call_id": call_id, "output": "ok"}


def test_parse_script_reads_every_key() -> None:
    script = parse_script(
        'x [[sim deltas=200 delta_bytes=20 delay_ms=5]] y [[sim call exec_command {"cmd":"a b"}]]'
        " [[sim calls=3 rounds=2 reasoning=1 terminal=incomplete]]"
    )
    assert (script.deltas, script.delta_bytes, script.delay_ms) == (200, 20, 5.0)
    assert script.call_kind == "function_call" and script.call_name == "exec_command"
    assert script.call_args == '{"cmd":"a b"}'
    assert (script.calls, script.rounds, script.reasoning, script.terminal) == (
        3,
        2,
        True,
        "incomplete",
    )


def test_parse_script_ignores_bad_values() -> None:
    assert parse_script("[[sim deltas=lots terminal=exploded]]").deltas == 3
    assert parse_script("[[sim deltas=lots terminal=exploded]]").terminal == "completed"


def test_text_answer_echoes_the_prompt_without_directives() -> None:
    answer = answer_for(
        [user("a question that is rather long, more than forty chars [[sim deltas=2]]")]
    )
    assert answer.deltas == ["sim-answer: a question that is rather long, more tha", " w1"]
    assert answer.text == "".join(answer.deltas) and answer.calls == []


def test_last_user_message_scripts_the_answer() -> None:
    context = [
        user("[[sim deltas=9]]"),
        {"type": "message", "role": "assistant", "content": []},
        user("plain"),
    ]
    assert len(answer_for(context).deltas) == 3


def test_call_then_tool_outputs_then_rounds() -> None:
    prompt = user('[[sim call exec_command {"cmd":"echo"}]] [[sim calls=2 rounds=2]]')
    first = answer_for([prompt])
    assert [c["name"] for c in first.calls] == ["exec_command"] * 2
    ids = [c["call_id"] for c in first.calls]
    round_one = [prompt, *first.calls, out(ids[0]), out(ids[1])]
    second = answer_for(round_one)
    assert len(second.calls) == 2  # rounds=2: call once more
    ids2 = [c["call_id"] for c in second.calls]
    done = answer_for([*round_one, *second.calls, out(ids2[0]), out(ids2[1])])
    assert done.text == "tool said: ok ok"


def test_structured_tool_output_is_read() -> None:
    prompt = user("[[sim call f {}]]")
    output = {
        "type": "function_call_output",
        "call_id": "c1",
        "output": [{"type": "input_text", "text": "parts"}],
    }
    assert answer_for([prompt, call("c1"), output]).text == "tool said: parts"


def test_input_items() -> None:
    assert input_items("hi") == [user("hi")]
    assert input_items(None) == []
    with pytest.raises(ValueError):
        input_items(42)


@pytest.mark.parametrize(
    ("context", "complaint"),
    [
        ([user("x"), call("c1"), out("c1")], None),
        ([call("c1"), call("c2"), out("c2"), out("c1")], None),
        ([call("c1")], "No tool output found for function call c1."),
        ([call("c1", "custom_tool_call")], "No tool output found for custom tool call c1."),
        ([call("c1", "local_shell_call")], "No tool output found for function call c1."),
        ([out("c9")], "No tool call found for function call output with call_id c9."),
        (
            [out("c9", "custom_tool_call_output")],
            "No tool call found for custom tool call output with call_id c9.",
        ),
        ([out("c1"), call("c1")], "No tool call found for function call output with call_id c1."),
        ([call("c1"), out("c1"), out("c1")], "Duplicate tool output found for call_id c1."),
    ],
)
def test_pairing_error(context: list[Item], complaint: str | None) -> None:
    assert pairing_error(context) == complaint
