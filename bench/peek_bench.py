"""Cost of the terminal-event peek on a large completed response.

    .venv/bin/python -m bench.peek_bench

A ``response.completed`` of about 200 KB (ten 20 KB message items and one function call,
in the upstream's compact key order), through ``TurnTracker.observe``: the typed peek of
the frame (output items kept raw for the transcript) and the pending-call scan, which
reads message items' types from their first bytes instead of decoding them.
"""

from __future__ import annotations

import json
import timeit
from collections.abc import Callable

import msgspec

from gateway.events import _item_decoder, peek_response, pending_calls
from gateway.turn import TurnTracker

N = 300


def completed_event(items: int = 10, text_bytes: int = 20_000) -> str:
    output: list[dict[str, object]] = [
        {
            "id": f"msg_{i}",
            "type": "message",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": "x" * text_bytes, "annotations": []}],
        }
        for i in range(items)
    ]
    output.append(
        {
            "id": "fc_1",
            "type": "function_call",
            "status": "completed",
            "arguments": '{"cmd":"echo ok"}',
            "call_id": "call_1",
            "name": "exec_command",
        }
    )
    response = {
        "id": "resp_1",
        "object": "response",
        "status": "completed",
        "model": "gpt-5",
        "output": output,
        "usage": {"input_tokens": 10, "output_tokens": 20, "total_tokens": 30},
    }
    event = {"type": "response.completed", "sequence_number": 99, "response": response}
    return json.dumps(event, separators=(",", ":"))


def us(fn: Callable[[], object]) -> float:
    return min(timeit.repeat(fn, number=N, repeat=5)) / N * 1e6


def main() -> None:
    frame = completed_event()
    output = peek_response(frame).output

    def decode_every_item() -> None:  # what the pending-call scan did before
        for raw in output:
            _item_decoder.decode(raw)

    def observe() -> None:
        TurnTracker().observe(frame)

    print(f"completed event: {len(frame):,} bytes, {len(output)} output items")
    rows = [
        ("typed peek of the frame (items kept raw)", us(lambda: peek_response(frame))),
        ("pending calls, types read from item heads", us(lambda: pending_calls(output))),
        ("pending calls, every item decoded", us(decode_every_item)),
        ("TurnTracker.observe (peek + pending calls)", us(observe)),
        ("whole frame decoded to Python objects", us(lambda: msgspec.json.decode(frame))),
    ]
    for label, value in rows:
        print(f"{label:45} {value:8.1f} µs")


if __name__ == "__main__":
    main()
