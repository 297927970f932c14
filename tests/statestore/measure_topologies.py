"""Measure a turn's bind and lookup on one redis-server, a 3-primary Redis Cluster and a
Sentinel-managed primary, all started here on loopback:

    .venv/bin/python -m tests.statestore.measure_topologies [--turns 2000]

A turn binds a new response in a session on one store; another store (its cache cold,
as on a second instance) then looks up the response and the session. Round trips are
the requests the client wrote: one per node a pipeline touches, sent concurrently.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from statestore import open_store
from tests.statestore.support import ClusterTraffic, binding, count_round_trips
from tests.support import RedisServer, unique_prefix
from tests.support.redis_topologies import run_redis_cluster, run_sentinel


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(url: str, turns: int, cluster: bool) -> dict[str, Any]:
    prefix = unique_prefix("measure")
    writer = open_store(url, key_prefix=prefix)
    reader = open_store(url, key_prefix=prefix)
    with pytest.MonkeyPatch.context() as patch:
        traffic = ClusterTraffic().install(patch) if cluster else None
        writes = [] if cluster else await count_round_trips(writer)
        reads = [] if cluster else await count_round_trips(reader)
        assert await writer.ping() and await reader.ping()
        for n in range(50):  # warm every connection
            await writer.bind_turn(binding(f"warm-{n}", session_key=f"warm-{n}"))
            await reader.lookup("g", response_id=f"warm-{n}", session_key=f"warm-{n}")
        bind_s: list[float] = []
        lookup_s: list[float] = []
        bind_trips: list[int] = []
        lookup_trips: list[int] = []
        for n in range(turns):
            b = binding(f"r-{n}", session_key=f"s-{n % 200}")
            before = len(traffic.requests) if traffic else len(writes)
            started = time.perf_counter()
            outcome = await writer.bind_turn(b)
            bind_s.append(time.perf_counter() - started)
            bind_trips.append((len(traffic.requests) if traffic else len(writes)) - before)
            before = len(traffic.requests) if traffic else len(reads)
            started = time.perf_counter()
            found = await reader.lookup("g", response_id=b.response_id, session_key=b.session_key)
            lookup_s.append(time.perf_counter() - started)
            lookup_trips.append((len(traffic.requests) if traffic else len(reads)) - before)
            assert outcome.ok and found.account_id == "acct-a" and not found.degraded
        errors = traffic.errors if traffic else []
    await writer.aclose()
    await reader.aclose()
    as_ms = 1000.0
    return {
        "bind_p50_ms": percentile(bind_s, 0.5) * as_ms,
        "bind_p99_ms": percentile(bind_s, 0.99) * as_ms,
        "lookup_p50_ms": percentile(lookup_s, 0.5) * as_ms,
        "lookup_p99_ms": percentile(lookup_s, 0.99) * as_ms,
        "bind_round_trips": statistics.mean(bind_trips),
        "lookup_round_trips": statistics.mean(lookup_trips),
        "max_round_trips_per_op": max(bind_trips + lookup_trips),
        "redirect_or_error_replies": len(errors),
    }


@contextmanager
def single() -> Iterator[str]:
    server = RedisServer().start()
    try:
        yield server.url
    finally:
        server.stop()


@contextmanager
def cluster() -> Iterator[str]:
    with run_redis_cluster() as setup:
        yield setup.url


@contextmanager
def sentinel() -> Iterator[str]:
    with run_sentinel() as setup:
        yield setup.url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=2000)
    args = parser.parse_args()
    print(f"{args.turns} turns each (bind on one store, cold lookup on another)")
    for name, topology in (("single", single), ("cluster", cluster), ("sentinel", sentinel)):
        with topology() as url:
            result = asyncio.run(measure(url, args.turns, cluster=name == "cluster"))
        cells = "  ".join(
            f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()
        )
        print(f"{name:9s} {cells}")


if __name__ == "__main__":
    main()
