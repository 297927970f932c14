"""Normalizer cost on a 1 MB, 200-item request: unchanged vs one injection.

.venv/bin/python -m bench.normalizer_bench
"""

from __future__ import annotations

import json
import statistics
import time

from normalizer import ContinuationState, PendingCall, decode_request, normalize


def build(n_items: int = 200, total: int = 1_000_000) -> bytes:
    chunk = "x" * (total // n_items)
    items = [
        {
            "type": "message",
            "role": "user" if i % 2 else "assistant",
            "content": [{"type": "input_text", "text": chunk}],
        }
        for i in range(n_items)
    ]
    return json.dumps(
        {
            "type": "response.create",
            "model": "m",
            "store": False,
            "previous_response_id": "resp_1",
            "input": items,
        }
    ).encode()


def time_it(frame: bytes, state: ContinuationState, rounds: int = 200) -> tuple[float, bool]:
    samples = []
    unchanged = True
    for _ in range(rounds):
        t0 = time.perf_counter()
        result = normalize(decode_request(frame), state)
        samples.append(time.perf_counter() - t0)
        unchanged = result.payload is frame
    return statistics.median(samples) * 1e3, unchanged


def main() -> None:
    frame = build()
    clean = ContinuationState(last_response_id="resp_1", pending_calls=())
    inject = ContinuationState(
        last_response_id="resp_1", pending_calls=(PendingCall("call_1", "function_call"),)
    )
    t_clean, same = time_it(frame, clean)
    t_inject, same_inject = time_it(frame, inject)
    print(f"request: {len(frame):,} bytes, 200 items")
    print(
        f"no change:      decode+normalize+encode p50 {t_clean:.3f} ms; payload is the original bytes object: {same}"
    )
    print(
        f"one injection:  decode+normalize+encode p50 {t_inject:.3f} ms; payload is the original bytes object: {same_inject}"
    )


if __name__ == "__main__":
    main()
