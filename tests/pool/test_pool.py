"""Pool behaviour with fake sockets and an injected clock: no sleeps, no network."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from pool import AccountPool, DialFailed, Lease, PoolConfig, PoolExhausted, PoolManager
from pool.heap import Entry, IndexedHeap
from tests.pool.fakes import FakeClock, FakeConn, FakeDialer


def make_pool(**cfg: object) -> tuple[AccountPool, FakeDialer, FakeClock]:
    clock = FakeClock()
    dialer = FakeDialer()
    return AccountPool("acct", dialer, PoolConfig(**cfg), clock), dialer, clock  # type: ignore[arg-type]


async def test_release_then_acquire_reuses_and_preferred_is_fast_path() -> None:
    pool, dialer, clock = make_pool()
    a = await pool.acquire()
    b = await pool.acquire()
    assert (a.reused, b.reused) == (False, False)
    a.release()
    clock.advance(1)
    b.release()
    again = await pool.acquire(preferred_conn_id=b.conn_id)
    assert again.conn_id == b.conn_id and again.preferred_hit and again.reused
    other = await pool.acquire(
        preferred_conn_id=b.conn_id
    )  # preferred is leased: no waiting for it
    assert other.conn_id == a.conn_id and not other.preferred_hit
    assert len(dialer.dialed) == 2
    assert pool.stats().reuse_ratio == pytest.approx(2 / 4)


async def test_unbound_sockets_go_to_new_conversations_first() -> None:
    pool, _, clock = make_pool()
    bound = await pool.acquire()
    free = await pool.acquire()
    bound.release(bound=True)  # holds a store:false conversation's previous response
    clock.advance(5)
    free.release()  # more recently used, but unbound
    lease = await pool.acquire()
    assert lease.conn_id == free.conn_id


async def test_broken_sockets_never_return() -> None:
    pool, dialer, _ = make_pool()
    lease = await pool.acquire()
    lease.release(broken=True)
    lease.release()  # idempotent: the second release is ignored
    await asyncio.sleep(0)  # let the background close run
    assert dialer.dialed[0].closed
    fresh = await pool.acquire()
    assert fresh.conn_id != lease.conn_id and not fresh.reused
    assert pool.stats().broken == 1


async def test_waiters_are_served_in_order_and_queue_is_bounded() -> None:
    pool, _, _ = make_pool(max_conns=1, queue_limit=2, acquire_timeout_s=5)
    held = await pool.acquire()
    order: list[str] = []

    async def wait(name: str) -> Lease:
        lease = await pool.acquire()
        order.append(name)
        return lease

    first = asyncio.create_task(wait("first"))
    await asyncio.sleep(0)
    second = asyncio.create_task(wait("second"))
    await asyncio.sleep(0)
    with pytest.raises(PoolExhausted, match="queue limit 2"):
        await pool.acquire()
    held.release()
    lease1 = await first
    lease1.release()
    lease2 = await second
    assert order == ["first", "second"] and lease2.conn_id == held.conn_id


async def test_wait_times_out_with_a_clear_error() -> None:
    pool, _, _ = make_pool(max_conns=1)
    await pool.acquire()
    with pytest.raises(PoolExhausted, match="timed out"):
        await pool.acquire(timeout=0.01)
    assert pool.stats().exhausted == 1


async def test_cancelled_waiter_leaves_no_trace_even_when_handed_a_socket() -> None:
    pool, _, _ = make_pool(max_conns=1)
    held = await pool.acquire()
    waiter = asyncio.create_task(pool.acquire())
    await asyncio.sleep(0)
    held.release()  # handed to the waiter...
    waiter.cancel()  # ...which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await waiter
    pool._check_invariants()
    lease = await pool.acquire(timeout=0.1)  # the socket went back to the heap
    assert lease.conn_id == held.conn_id


async def test_dial_failure_frees_the_slot() -> None:
    pool, dialer, _ = make_pool(max_conns=1)
    dialer.fail = True
    with pytest.raises(DialFailed) as info:
        await pool.acquire()
    assert isinstance(info.value.__cause__, ConnectionRefusedError)
    dialer.fail = False
    lease = await pool.acquire()
    assert not lease.reused and pool.size == 1


async def test_ping_before_lease_drops_a_half_open_socket() -> None:
    pool, dialer, clock = make_pool(ping_before_lease_idle_s=20)
    lease = await pool.acquire()
    lease.release()
    clock.advance(21)
    dialer.dialed[0].ping_fails = True
    fresh = await pool.acquire()
    assert fresh.conn_id != lease.conn_id
    assert pool.stats().pings_failed == 1
    fresh.release()
    clock.advance(5)  # recently used: no ping before this lease
    again = await pool.acquire()
    assert again.conn_id == fresh.conn_id and dialer.dialed[1].pings == 0


async def test_background_ping_age_and_trim() -> None:
    pool, dialer, clock = make_pool(ping_interval_s=30, max_age_s=100, max_idle=1)
    leases = [await pool.acquire() for _ in range(3)]
    for lease in leases:
        lease.release()
    await pool.maintain_once()
    assert pool.stats().idle == 1 and pool.stats().trimmed == 2  # trimmed to max_idle
    clock.advance(31)
    survivor = next(c for c in dialer.dialed if pool.has_idle(c.conn_id))
    survivor.ping_fails = True
    await pool.maintain_once()
    assert pool.stats().idle == 0 and pool.stats().pings_failed == 1
    lease = await pool.acquire()
    lease.release()
    clock.advance(101)
    await pool.maintain_once()
    assert pool.stats().expired == 1 and pool.stats().idle == 0


async def test_leased_socket_past_max_age_is_closed_on_release() -> None:
    pool, dialer, clock = make_pool(max_age_s=100)
    lease = await pool.acquire()
    clock.advance(101)
    lease.release()
    await asyncio.sleep(0)
    assert dialer.dialed[0].closed and pool.stats().expired == 1


async def test_prewarm_burst_starts_one_task_and_gate_trips_on_failures() -> None:
    pool, dialer, clock = make_pool(
        min_idle=2,
        max_conns=1000,
        prewarm_cooldown_s=1,
        prewarm_failure_threshold=2,
        prewarm_reopen_s=30,
    )
    dialer.gate = asyncio.Event()
    burst = [asyncio.create_task(pool.acquire()) for _ in range(1000)]
    await asyncio.sleep(0)
    assert pool.stats().prewarm_runs <= 1
    dialer.gate.set()
    leases = await asyncio.gather(*burst)
    await pool.wait_prewarm()
    assert pool.stats().prewarm_runs <= 1  # one task at most for the whole burst
    for lease in leases:
        lease.release(broken=True)
    await asyncio.sleep(0)

    dialer.fail = True
    clock.advance(2)
    await pool.maintain_once()  # a round runs and its dials fail
    await pool.wait_prewarm()
    runs = pool.stats().prewarm_runs
    clock.advance(2)
    await pool.maintain_once()
    assert pool.stats().prewarm_runs == runs  # the gate is closed
    dialer.fail = False
    clock.advance(31)
    await pool.maintain_once()
    await pool.wait_prewarm()
    assert pool.stats().prewarm_runs == runs + 1 and pool.stats().idle == 2


async def test_manager_creates_pools_and_closes_them() -> None:
    dialer = FakeDialer()
    manager = PoolManager(
        dialer, PoolConfig(), clock=FakeClock(), per_account={"a": PoolConfig(max_conns=2)}
    )
    lease = await manager.pool("a").acquire()
    lease.release()
    assert manager.pool("a").config.max_conns == 2 and set(manager.stats()) == {"a"}
    manager.start()
    await manager.aclose()
    assert dialer.dialed[0].closed


def test_indexed_heap_orders_by_bound_then_lru() -> None:
    heap = IndexedHeap()
    for i, (bound, used) in enumerate([(True, 1.0), (False, 5.0), (False, 2.0), (True, 0.5)]):
        heap.push(Entry(FakeConn(f"c{i}"), f"c{i}", 0.0, used, used, bound))
        heap.check()
    assert heap.remove("c2") is not None and "c2" not in heap
    heap.check()
    assert [heap.pop().conn_id for _ in range(3)] == ["c1", "c3", "c0"]  # type: ignore[union-attr]
    assert heap.pop() is None and heap.remove("missing") is None


class PoolMachine(RuleBasedStateMachine):
    """Random acquire / release / broken / age / ping-fail / cancel against the invariants."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = FakeClock()
        self.dialer = FakeDialer()
        self.cfg = PoolConfig(
            max_conns=4, max_age_s=500, ping_before_lease_idle_s=50, queue_limit=8
        )
        self.pool = AccountPool("acct", self.dialer, self.cfg, self.clock)
        self.leases: list[Lease] = []
        self.waiters: list[asyncio.Task[Lease]] = []
        self.served: list[asyncio.Task[Lease]] = []

    def run(self, coro: object) -> object:
        return self.loop.run_until_complete(coro)  # type: ignore[arg-type]

    def settle(self) -> None:
        self.run(asyncio.sleep(0))
        self.run(asyncio.sleep(0))
        for task in list(self.waiters):
            if task.done():
                self.waiters.remove(task)
                if not task.cancelled() and task.exception() is None:
                    self.leases.append(task.result())
                    self.served.append(task)

    @rule(prefer=st.booleans())
    def acquire(self, prefer: bool) -> None:
        idle = self.pool._idle.entries()
        entry = idle[-1] if prefer and idle else None
        healthy = False
        if entry is not None:
            conn = entry.conn
            assert isinstance(conn, FakeConn)
            now = self.clock()
            healthy = (
                not conn.closed
                and now - entry.created_at < self.cfg.max_age_s
                and (
                    now - entry.last_used < self.cfg.ping_before_lease_idle_s or not conn.ping_fails
                )
            )
        preferred = entry.conn_id if entry is not None else None
        task = self.loop.create_task(self.pool.acquire(preferred_conn_id=preferred, timeout=60))
        self.waiters.append(task)
        self.settle()
        if healthy:
            assert task in self.served
            lease = task.result()
            assert lease.conn_id == preferred and lease.preferred_hit

    @precondition(lambda self: self.leases)
    @rule(i=st.integers(0, 10), broken=st.booleans(), bound=st.booleans())
    def release(self, i: int, broken: bool, bound: bool) -> None:
        lease = self.leases.pop(i % len(self.leases))
        lease.release(broken=broken, bound=bound)
        self.settle()

    @rule(seconds=st.sampled_from([1.0, 60.0, 600.0]))
    def age(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @precondition(lambda self: self.pool._idle.entries())
    @rule()
    def ping_fails(self) -> None:
        conn = self.pool._idle.entries()[0].conn
        assert isinstance(conn, FakeConn)
        conn.ping_fails = True

    @precondition(lambda self: self.waiters)
    @rule()
    def cancel_waiter(self) -> None:
        self.waiters.pop(0).cancel()
        self.settle()

    @invariant()
    def consistent(self) -> None:
        self.pool._check_invariants()
        leased = [lease.conn for lease in self.leases]
        assert len({id(c) for c in leased}) == len(leased)  # never leased twice
        for conn in leased:
            assert isinstance(conn, FakeConn)
            assert conn.failed_pings == 0  # a socket whose ping failed is never leased
            assert not conn.closed
        assert self.pool.size <= self.cfg.max_conns

    def teardown(self) -> None:
        for task in self.waiters:
            task.cancel()
        self.run(self.pool.aclose())
        self.loop.close()


TestPoolMachine = PoolMachine.TestCase
TestPoolMachine.settings = settings(max_examples=60, stateful_step_count=25, deadline=None)
