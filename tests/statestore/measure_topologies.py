"""Measure a turn's bind and lookup on one redis-server, a 3-primary Redis Cluster and a
Sentinel-managed primary, all started here on loopback:

    .venv/bin/python -m tests.statestore.measure_topologies [--turns 2000]

A turn binds a new response in a session on one store; another store (its cache cold,
as on a second instance) then looks up the response and the session. The topologies
take turns in rotation, so a busy machine slows them alike. Round trips are the requests
the client wrote: one per node a pipeline touches, sent concurrently.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import pytest

from statestore import StateStore, open_store
from tests.statestore.support import ClusterTraffic, binding, count_round_trips
from tests.support import RedisServer, unique_prefix
from tests.support.redis_topologies import run_redis_cluster, run_sentinel


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Probe:
    """One topology: a writer and a reader store, and what their turns cost."""

    name: str
    writer: StateStore
    reader: StateStore
    trips: Any  # a list of socket writes, or ClusterTraffic
    bind_s: list[float] = field(default_factory=list)
    lookup_s: list[float] = field(default_factory=list)
    bind_trips: list[int] = field(default_factory=list)
    lookup_trips: list[int] = field(default_factory=list)
    degraded: int = 0

    def sent(self) -> int:
        return len(self.trips.requests if isinstance(self.trips, ClusterTraffic) else self.trips)

    async def turn(self, n: int) -> None:
        b = binding(f"r-{n}", session_key=f"s-{n % 200}")
        before, started = self.sent(), time.perf_counter()
        outcome = await self.writer.bind_turn(b)
        self.bind_s.append(time.perf_counter() - started)
        self.bind_trips.append(self.sent() - before)
        before, started = self.sent(), time.perf_counter()
        found = await self.reader.lookup("g", response_id=b.response_id, session_key=b.session_key)
        self.lookup_s.append(time.perf_counter() - started)
        self.lookup_trips.append(self.sent() - before)
        # Past the op deadline (a busy machine) an op degrades: counted, not fatal.
        self.degraded += int(not outcome.ok) + int(found.degraded)
        assert found.degraded or found.account_id == "acct-a"

    def report(self) -> str:
        errors = len(self.trips.errors) if isinstance(self.trips, ClusterTraffic) else 0
        ms = 1000.0
        return (
            f"{self.name:9s} bind p50={percentile(self.bind_s, 0.5) * ms:.3f} ms"
            f" p99={percentile(self.bind_s, 0.99) * ms:.3f} ms"
            f" | lookup p50={percentile(self.lookup_s, 0.5) * ms:.3f} ms"
            f" p99={percentile(self.lookup_s, 0.99) * ms:.3f} ms"
            f" | round trips per bind={statistics.mean(self.bind_trips):.2f}"
            f" lookup={statistics.mean(self.lookup_trips):.2f}"
            f" max per op={max(self.bind_trips + self.lookup_trips)}"
            f" | error replies={errors} past deadline={self.degraded}"
        )


async def probe(name: str, url: str, patch: pytest.MonkeyPatch) -> Probe:
    prefix = unique_prefix("measure")
    writer = open_store(url, key_prefix=prefix)
    reader = open_store(url, key_prefix=prefix)
    if name == "cluster":
        trips: Any = ClusterTraffic().install(patch)
        assert await writer.ping() and await reader.ping()
    else:
        trips = await count_round_trips(writer)
        reader_trips = await count_round_trips(reader)
        reader_trips.clear()
        trips = _Merged(trips, reader_trips)
    result = Probe(name, writer, reader, trips)
    for n in range(50):  # warm every connection
        await result.turn(-1 - n)
    for series in (result.bind_s, result.lookup_s, result.bind_trips, result.lookup_trips):
        series.clear()
    if isinstance(trips, ClusterTraffic):
        trips.clear()
    return result


class _Merged(list[int]):
    """The writer's and the reader's socket writes, counted together."""

    def __init__(self, *logs: list[int]) -> None:
        super().__init__()
        self.logs = logs

    def __len__(self) -> int:
        return sum(len(log) for log in self.logs)


async def run(urls: dict[str, str], turns: int) -> None:
    with pytest.MonkeyPatch.context() as patch:
        probes = [await probe(name, url, patch) for name, url in urls.items()]
        for n in range(turns):
            for p in probes:
                await p.turn(n)
        for p in probes:
            print(p.report())
            await p.writer.aclose()
            await p.reader.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=2000)
    args = parser.parse_args()
    with ExitStack() as stack:
        single = RedisServer().start()
        stack.callback(single.stop)
        cluster = stack.enter_context(run_redis_cluster())
        sentinel = stack.enter_context(run_sentinel())
        urls = {"single": single.url, "cluster": cluster.url, "sentinel": sentinel.url}
        print(f"{args.turns} turns each: bind on one store, then a cold lookup on another")
        asyncio.run(run(urls, args.turns))


if __name__ == "__main__":
    main()
