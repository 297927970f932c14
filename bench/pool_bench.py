"""Pool acquire+release cost at 10..10,000 idle connections: flat means O(log n).

    .venv/bin/python -m bench.pool_bench

Each size gets its own pool of in-memory sockets (no network), all idle, half of them
bound. Two loops are timed in batches of 1,000 pairs: acquire() + release() (the heap
top: pop, then push back as the newest), and acquire(preferred_conn_id=...) + release
(bound=True) on a socket spread across the heap (remove from the middle by id). The
table shows the median batch's ns per pair and, less sensitive to other load on the
machine, the best batch's; the last line is the 10k/10 ratio of the medians.
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time

from pool import AccountPool, PoolConfig
from pool.invariants import check_invariants

SIZES = (10, 100, 1_000, 10_000)
BATCH = 1_000


class _Conn:
    __slots__ = ("closed", "conn_id")

    def __init__(self, conn_id: str) -> None:
        self.conn_id = conn_id
        self.closed = False

    async def ping(self, timeout: float) -> None:
        return None

    async def aclose(self) -> None:
        self.closed = True


class _Dialer:
    def __init__(self) -> None:
        self._ids = itertools.count(1)

    async def dial(self, account_id: str) -> _Conn:
        return _Conn(f"bench:{account_id}:{next(self._ids)}")


async def measure(size: int, batches: int = 30) -> dict[str, float]:
    pool = AccountPool(
        "bench", _Dialer(), PoolConfig(max_conns=size, max_idle=size), time.monotonic
    )
    leases = [await pool.acquire() for _ in range(size)]
    for i, lease in enumerate(leases):
        lease.release(bound=i % 2 == 0)
    ids = [lease.conn_id for lease in leases]
    step = 7919  # a prime: walks every position of the heap, not just the top
    plain: list[float] = []
    preferred: list[float] = []
    r = 0
    for _ in range(batches):
        t0 = time.perf_counter_ns()
        for _ in range(BATCH):
            lease = await pool.acquire()
            lease.release()
        plain.append((time.perf_counter_ns() - t0) / BATCH)
        t0 = time.perf_counter_ns()
        for _ in range(BATCH):
            lease = await pool.acquire(preferred_conn_id=ids[r % size])
            lease.release(bound=True)
            r += step
        preferred.append((time.perf_counter_ns() - t0) / BATCH)
    stats = pool.stats()
    assert stats.idle == size and stats.dials == size, "the bench must only reuse"
    assert stats.preferred_hits == batches * BATCH, "every preferred socket was idle"
    check_invariants(pool)
    await pool.aclose()
    return {
        "size": size,
        "acquire_release_ns_p50": statistics.median(plain),
        "acquire_release_ns_min": min(plain),
        "preferred_ns_p50": statistics.median(preferred),
        "preferred_ns_min": min(preferred),
    }


def run() -> list[dict[str, float]]:
    return [asyncio.run(measure(size)) for size in SIZES]


def main() -> None:
    rows = run()
    print(
        "| idle conns | acquire+release ns/pair (median / best batch)"
        " | preferred acquire+release ns/pair (median / best batch) |"
    )
    print("|---:|---:|---:|")
    for row in rows:
        print(
            f"| {int(row['size']):,}"
            f" | {row['acquire_release_ns_p50']:,.0f} / {row['acquire_release_ns_min']:,.0f}"
            f" | {row['preferred_ns_p50']:,.0f} / {row['preferred_ns_min']:,.0f} |"
        )
    first, last = rows[0], rows[-1]
    ratio = last["acquire_release_ns_p50"] / first["acquire_release_ns_p50"]
    ratio_preferred = last["preferred_ns_p50"] / first["preferred_ns_p50"]
    print(f"\n10k/10 ratio: {ratio:.2f} (preferred: {ratio_preferred:.2f}); target <= 2")


if __name__ == "__main__":
    main()
