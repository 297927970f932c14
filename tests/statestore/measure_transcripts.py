"""What durable transcripts cost, on a real redis-server (one run, printed as JSON):

    python -m tests.statestore.measure_transcripts

- bytes appended per incremental turn (a Codex-like turn: a tool output, a short user
  message, an assistant message and a call);
- bind latency p50/p99 with and without the delta (the same single round trip);
- Redis memory per 1,000 active conversations of 10 turns each;
- time to rebuild a 200-item, 1 MB conversation (load, check the chain, decode).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time

import msgspec
import redis.asyncio as aioredis

from statestore import TranscriptDelta, TurnBinding, chain_items, open_store
from tests.support import RedisServer


def item(kind: str, size: int) -> msgspec.Raw:
    body = {"type": kind, "call_id": "call_x", "output": "x" * size}
    return msgspec.Raw(msgspec.json.encode(body))


TURN_ITEMS = [item("function_call_output", 600), item("message", 200)]
OUTPUT_ITEMS = [item("message", 700), item("function_call", 250)]


def binding(session: str, rid: str, prev: str | None, with_delta: bool) -> TurnBinding:
    items = [*TURN_ITEMS, *OUTPUT_ITEMS]
    delta = TranscriptDelta(prev, rid, items) if with_delta else None
    return TurnBinding(
        group="g",
        account_id="acct-a",
        response_id=rid,
        session_key=session,
        pending_calls={"call_x": "function_call"},
        transcript=delta,
    )


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 3),
        "p99_ms": round(ordered[int(len(ordered) * 0.99) - 1] * 1000, 3),
    }


async def bind_latency(url: str, with_delta: bool, turns: int = 2000) -> dict[str, float]:
    store = open_store(url, key_prefix=f"m{int(with_delta)}")
    samples = []
    prev: str | None = None
    for n in range(turns):
        rid = f"r{n}"
        started = time.perf_counter()
        await store.bind_turn(binding(f"s{n % 50}", rid, prev if n >= 50 else None, with_delta))
        samples.append(time.perf_counter() - started)
        prev = rid
    await store.aclose()
    return percentiles(samples)


async def memory_per_1000(url: str) -> float:
    client = aioredis.Redis.from_url(url)
    await client.flushall()
    before = (await client.info("memory"))["used_memory"]
    store = open_store(url, key_prefix="mem")
    for conv in range(1000):
        prev = None
        for turn in range(10):
            rid = f"c{conv}t{turn}"
            await store.bind_turn(binding(f"conv{conv}", rid, prev, True))
            prev = rid
    after = (await client.info("memory"))["used_memory"]
    await store.aclose()
    await client.aclose()
    return round((after - before) / 1024 / 1024, 1)


async def rebuild_time(url: str) -> dict[str, float]:
    store = open_store(url, key_prefix="big")
    big = [item("message", 5100) for _ in range(200)]  # ~1 MB
    prev = None
    for n in range(0, 200, 2):  # 100 turns, 2 items each
        rid = f"b{n}"
        delta = TranscriptDelta(prev, rid, big[n : n + 2])
        await store.bind_turn(
            TurnBinding(
                group="g", account_id="a", response_id=rid, session_key="big", transcript=delta
            )
        )
        prev = rid
    samples = []
    for _ in range(20):
        started = time.perf_counter()
        deltas = await store.load_transcript("g", "big")
        items = chain_items(deltas or [], prev or "")
        samples.append(time.perf_counter() - started)
        assert items is not None and len(items) == 200
    await store.aclose()
    size = sum(len(i) for i in big)
    return {"bytes": size, **percentiles(samples)}


async def main(url: str) -> dict[str, object]:
    delta_bytes = len(
        msgspec.json.encode(TranscriptDelta("r0", "r1", [*TURN_ITEMS, *OUTPUT_ITEMS]))
    )
    return {
        "bytes_per_incremental_turn": delta_bytes,
        "bind_without_delta": await bind_latency(url, False),
        "bind_with_delta": await bind_latency(url, True),
        "redis_mib_per_1000_conversations_of_10_turns": await memory_per_1000(url),
        "rebuild_200_items": await rebuild_time(url),
    }


if __name__ == "__main__":
    server = RedisServer().start()
    try:
        print(json.dumps(asyncio.run(main(server.url)), indent=1))
    finally:
        server.stop()
