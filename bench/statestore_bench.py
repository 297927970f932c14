"""State store latency against a private redis-server on loopback: a turn's bind (one
pipeline, four keys), a cold lookup (a second instance with an empty cache: one pipeline
for the response and session records), and the warm paths for comparison.

.venv/bin/python -m bench.statestore_bench [--rounds 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable

from statestore import TurnBinding, open_store
from tests.support import RedisServer, unique_prefix


def pct_ms(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3


async def timed(rounds: int, op: Callable[[int], Awaitable[object]]) -> list[float]:
    samples = []
    for i in range(rounds):
        started = time.perf_counter()
        await op(i)
        samples.append(time.perf_counter() - started)
    return samples


def turn(i: int) -> TurnBinding:
    return TurnBinding(
        group="g",
        account_id="acct-a",
        response_id=f"resp_{i:08d}_abcdefghijklmnopqrstuvwxyz",
        session_key=f"session-{i % 64}",
        pending_calls={f"call_{i}_1": "function_call", f"call_{i}_2": "custom_tool_call"},
        turn_state=f"ts_{i % 64}",
        conn_id=f"gw:acct-a:{i % 8}",
    )


async def measure(url: str, rounds: int) -> dict[str, list[float]]:
    prefix = unique_prefix("bench")
    writer = open_store(url, key_prefix=prefix)
    reader = open_store(url, key_prefix=prefix)  # another instance: its cache starts cold
    await writer.start()
    await reader.start()
    for i in range(200):  # warm-up: connections, code paths
        await writer.bind_turn(turn(rounds + i))
        await reader.lookup("g", response_id=turn(rounds + i).response_id, session_key=None)

    async def bind(i: int) -> None:
        outcome = await writer.bind_turn(turn(i))
        assert outcome.ok, outcome.error

    async def cold(i: int) -> None:
        b = turn(i)
        found = await reader.lookup("g", response_id=b.response_id, session_key=b.session_key)
        assert found.source == "redis" and found.pending_calls == b.pending_calls

    async def hot(i: int) -> None:
        found = await reader.lookup("g", response_id=turn(i).response_id, session_key=None)
        assert found.source == "cache"

    async def hot_with_session(i: int) -> None:
        b = turn(i)
        await reader.lookup("g", response_id=b.response_id, session_key=b.session_key)

    results = {
        "bind (one pipeline, 4 SETs)": await timed(rounds, bind),
        "cold lookup (one pipeline, other instance)": await timed(rounds, cold),
        "hot lookup (cache only)": await timed(rounds, hot),
        "hot response + session (one round trip)": await timed(rounds, hot_with_session),
    }
    await writer.aclose()
    await reader.aclose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5000)
    args = parser.parse_args()
    server = RedisServer().start()
    try:
        results = asyncio.run(measure(server.url, args.rounds))
    finally:
        server.stop()
    print(f"statestore against redis-server on loopback, {args.rounds} rounds each")
    for name, samples in results.items():
        print(
            f"  {name:<44} p50 {pct_ms(samples, 0.50):7.3f} ms"
            f"   p99 {pct_ms(samples, 0.99):7.3f} ms"
        )


if __name__ == "__main__":
    main()
