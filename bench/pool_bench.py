"""Pool acquire+release cost at 10..10,000 idle connections (R-13): flat means O(log n).

.venv/bin/python -m bench.pool_bench
"""

from __future__ import annotations

import asyncio
import statistics
import time

from pool import AccountPool, PoolConfig
from tests.pool.fakes import FakeClock, FakeDialer

SIZES = (10, 100, 1_000, 10_000)


async def measure(size: int, rounds: int = 20_000) -> dict[str, float]:
    clock = FakeClock()
    pool = AccountPool(
        "bench",
        FakeDialer(),
        PoolConfig(max_conns=size, max_idle=size, ping_before_lease_idle_s=1e9),
        clock,
    )
    leases = [await pool.acquire() for _ in range(size)]
    for i, lease in enumerate(leases):
        clock.advance(0.001)
        lease.release(bound=i % 2 == 0)
    ids = [lease.conn_id for lease in leases]
    samples = []
    preferred = []
    for r in range(rounds):
        clock.advance(0.001)
        t0 = time.perf_counter_ns()
        lease = await pool.acquire()
        lease.release()
        samples.append(time.perf_counter_ns() - t0)
        t0 = time.perf_counter_ns()
        lease = await pool.acquire(preferred_conn_id=ids[(r * 7919) % size])
        lease.release(bound=True)
        preferred.append(time.perf_counter_ns() - t0)
    pool._check_invariants()
    return {
        "size": size,
        "acquire_release_ns_p50": statistics.median(samples),
        "preferred_ns_p50": statistics.median(preferred),
    }


def run() -> list[dict[str, float]]:
    return [asyncio.run(measure(size)) for size in SIZES]


def main() -> None:
    rows = run()
    print("| idle conns | acquire+release p50 (ns) | preferred acquire+release p50 (ns) |")
    print("|---:|---:|---:|")
    for row in rows:
        print(
            f"| {int(row['size']):,} | {row['acquire_release_ns_p50']:,.0f} | {row['preferred_ns_p50']:,.0f} |"
        )
    ratio = rows[-1]["acquire_release_ns_p50"] / rows[0]["acquire_release_ns_p50"]
    print(f"\n10k/10 ratio: {ratio:.2f} (target <= 2)")


if __name__ == "__main__":
    main()
