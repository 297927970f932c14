"""A turn's bind (one pipeline) and a cold lookup against a private redis-server.

.venv/bin/python -m bench.statestore_bench
"""

from __future__ import annotations

import asyncio
import statistics
import time

from statestore import TurnBinding, open_store
from tests.support import RedisServer, unique_prefix


def pct(samples: list[float], q: float) -> float:
    return sorted(samples)[min(len(samples) - 1, int(q * len(samples)))] * 1e3


async def measure(url: str, rounds: int = 3000) -> dict[str, float]:
    prefix = unique_prefix("bench")
    writer = open_store(url, key_prefix=prefix)
    binds, lookups = [], []
    for i in range(rounds):
        b = TurnBinding(
            group="g",
            account_id="acct-a",
            response_id=f"resp_{i}",
            session_key=f"s{i % 50}",
            pending_calls={"call_1": "function_call"},
            turn_state="ts",
        )
        t0 = time.perf_counter()
        await writer.bind_turn(b)
        binds.append(time.perf_counter() - t0)
    reader = open_store(url, key_prefix=prefix)  # cold cache: every lookup goes to Redis
    for i in range(rounds):
        t0 = time.perf_counter()
        await reader.lookup("g", response_id=f"resp_{i}", session_key=f"s{i % 50}")
        lookups.append(time.perf_counter() - t0)
    await writer.aclose()
    await reader.aclose()
    return {
        "bind_p50_ms": pct(binds, 0.5),
        "bind_p99_ms": pct(binds, 0.99),
        "lookup_p50_ms": pct(lookups, 0.5),
        "lookup_p99_ms": pct(lookups, 0.99),
        "bind_mean_ms": statistics.mean(binds) * 1e3,
    }


def main() -> None:
    server = RedisServer().start()
    try:
        result = asyncio.run(measure(server.url))
    finally:
        server.stop()
    print(
        f"bind (one pipeline, 4 keys): p50 {result['bind_p50_ms']:.3f} ms  p99 {result['bind_p99_ms']:.3f} ms"
    )
    print(
        f"cold lookup (one MGET):      p50 {result['lookup_p50_ms']:.3f} ms  p99 {result['lookup_p99_ms']:.3f} ms"
    )


if __name__ == "__main__":
    main()
