"""A Hypothesis state machine over acquire / release / release-broken / age / ping-fail /
socket death / maintenance / dial failure / cancel-waiter, checking the pool's invariants
after every step."""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from pool import AccountPool, Lease, PoolConfig
from pool.invariants import check_invariants
from tests.pool.fakes import FakeConn, FakeDialer
from tests.support import FakeClock, eventually

CFG = PoolConfig(
    max_conns=3,
    max_idle=3,
    queue_limit=4,
    max_age_s=500,
    ping_before_lease_idle_s=50,
    ping_interval_s=100,
    acquire_timeout_s=3600,  # real seconds: never reached, the machine cancels instead
)


class PoolMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = FakeClock()
        self.dialer = FakeDialer(self.clock)
        self.pool = AccountPool("acct", self.dialer, CFG, self.clock)
        self.leases: list[Lease] = []
        self.pending: list[tuple[int, asyncio.Task[Lease]]] = []  # creation order
        self.asked_for: dict[int, str | None] = {}  # seq -> preferred_conn_id
        self.seq = 0
        self.newest_served = -1
        self.broken_ids: set[str] = set()
        self.released_at: dict[str, float] = {}

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def _quiet(self) -> bool:
        """Every woken task has run: no dial in flight, no cancel still to be handled, and
        each unfinished acquire is one of the pool's queued waiters."""
        unfinished = [task for _, task in self.pending if not task.done()]
        stats = self.pool.stats()
        return (
            stats.dialing == 0
            and not any(task.cancelling() for task in unfinished)
            and len(unfinished) == stats.waiters
        )

    def settle(self) -> None:
        """Run woken tasks until the loop is quiet, then collect the finished acquires."""
        self.run(eventually(self._quiet, interval=0, what="the pool settling"))
        for item in list(self.pending):
            seq, task = item
            if not task.done():
                continue
            self.pending.remove(item)
            if task.cancelled() or task.exception() is not None:
                continue
            lease = task.result()
            conn = lease.conn
            assert isinstance(conn, FakeConn)
            now = self.clock()
            assert now - conn.dialed_at < CFG.max_age_s, "expired socket leased"
            # Quiet longer than the threshold means pinged right before this lease, and a
            # half-open socket fails that ping.
            alive = max(conn.dialed_at, conn.answered_at, self.released_at.get(conn.conn_id, 0.0))
            if now - alive >= CFG.ping_before_lease_idle_s:
                assert not conn.ping_fails, "a quiet half-open socket was leased unpinged"
            assert lease.preferred_hit == (lease.conn_id == self.asked_for[seq])
            self.leases.append(lease)
            self.newest_served = max(self.newest_served, seq)

    def idle_ids(self) -> list[str]:
        return sorted(conn.conn_id for conn in self.pool.idle_conns())

    def _released(self, lease: Lease, broken: bool) -> None:
        if broken:
            self.broken_ids.add(lease.conn_id)
        self.released_at[lease.conn_id] = self.clock()

    @initialize(idle=st.integers(0, CFG.max_conns), bound=st.booleans())
    def start_with_idle_sockets(self, idle: int, bound: bool) -> None:
        """Begin from a pool that already holds some idle sockets."""
        for _ in range(idle):
            self.acquire(prefer=False, pick=0)
        for lease in list(self.leases):
            self.clock.advance(1)
            self.leases.remove(lease)
            lease.release(bound=bound)
            self._released(lease, False)

    @rule(prefer=st.booleans(), pick=st.integers(0, 5))
    def acquire(self, prefer: bool, pick: int) -> None:
        idle = self.idle_ids()
        preferred = idle[pick % len(idle)] if prefer and idle else None
        healthy = False
        if preferred is not None:
            conn = self.dialer.by_id(preferred)
            now = self.clock()
            alive = max(conn.dialed_at, conn.answered_at, self.released_at.get(preferred, 0.0))
            healthy = (
                not conn.closed
                and now - conn.dialed_at < CFG.max_age_s
                and (now - alive < CFG.ping_before_lease_idle_s or not conn.ping_fails)
            )
        task = self.loop.create_task(self.pool.acquire(preferred_conn_id=preferred))
        self.pending.append((self.seq, task))
        self.asked_for[self.seq] = preferred
        self.seq += 1
        self.settle()
        if healthy:
            assert task.done() and not task.cancelled() and task.exception() is None
            lease = task.result()
            assert lease.conn_id == preferred and lease.preferred_hit and lease.reused

    @rule(prefer=st.booleans(), pick=st.integers(0, 5))
    def acquire_ready(self, prefer: bool, pick: int) -> None:
        """The no-await path leases only a socket that needs nothing done to it first."""
        idle = self.idle_ids()
        preferred = idle[pick % len(idle)] if prefer and idle else None
        lease = self.pool.acquire_ready(preferred_conn_id=preferred)
        if lease is None:
            return
        conn = lease.conn
        assert isinstance(conn, FakeConn)
        now = self.clock()
        assert not conn.closed and now - conn.dialed_at < CFG.max_age_s
        alive = max(conn.dialed_at, conn.answered_at, self.released_at.get(conn.conn_id, 0.0))
        assert now - alive < CFG.ping_before_lease_idle_s, "leased a socket that needed a ping"
        assert lease.reused and lease.preferred_hit == (lease.conn_id == preferred)
        if preferred is not None:
            assert lease.conn_id == preferred  # the preferred one, when it is leasable
        self.leases.append(lease)

    @precondition(lambda self: self.leases)
    @rule(i=st.integers(0, 10), broken=st.booleans(), bound=st.booleans())
    def release(self, i: int, broken: bool, bound: bool) -> None:
        lease = self.leases.pop(i % len(self.leases))
        lease.release(broken=broken, bound=bound)
        lease.release(broken=not broken)  # idempotent: the second call changes nothing
        self._released(lease, broken)
        self.settle()

    @precondition(lambda self: self.leases and self.pending)
    @rule(i=st.integers(0, 10), j=st.integers(0, 10), broken=st.booleans())
    def release_as_a_waiter_is_cancelled(self, i: int, j: int, broken: bool) -> None:
        """The released socket (or freed slot) is handed to a waiter cancelled in the
        same instant: it must go on to the next waiter or back to the heap."""
        lease = self.leases.pop(i % len(self.leases))
        lease.release(broken=broken)
        self._released(lease, broken)
        self.pending[j % len(self.pending)][1].cancel()
        self.settle()

    @rule(seconds=st.sampled_from([1.0, 30.0, 60.0, 120.0, 600.0]))
    def age(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @precondition(lambda self: self.pool.idle_conns())
    @rule(pick=st.integers(0, 5))
    def ping_fails(self, pick: int) -> None:
        idle = self.idle_ids()
        self.dialer.by_id(idle[pick % len(idle)]).ping_fails = True  # half-open

    @precondition(lambda self: self.pool.idle_conns())
    @rule(pick=st.integers(0, 5))
    def socket_dies(self, pick: int) -> None:
        idle = self.idle_ids()
        self.dialer.by_id(idle[pick % len(idle)]).closed = True  # the idle watcher saw it

    @rule(fail=st.booleans())
    def dials_fail(self, fail: bool) -> None:
        self.dialer.fail = fail

    @rule()
    def maintain(self) -> None:
        self.run(self.pool.maintain_once())
        self.settle()

    @precondition(lambda self: self.pending)
    @rule(i=st.integers(0, 10))
    def cancel_waiter(self, i: int) -> None:
        self.pending[i % len(self.pending)][1].cancel()
        self.settle()

    @invariant()
    def consistent(self) -> None:
        check_invariants(self.pool)  # heap/index agree, size <= max_conns, no stuck waiter
        conns = [lease.conn for lease in self.leases]
        assert len({lease.conn_id for lease in self.leases}) == len(conns), "leased twice"
        for conn in conns:
            assert isinstance(conn, FakeConn)
            assert conn.conn_id not in self.broken_ids, "a broken socket came back"
            assert conn.failed_pings == 0, "a socket whose ping failed was leased"
            assert not conn.closed, "a closed socket was leased"
        stats = self.pool.stats()
        # Nothing in flight between steps: every owned socket is idle or leased (no leak).
        assert stats.leased == len(self.leases) and stats.dialing == 0
        assert stats.size == stats.idle + stats.leased
        assert self.pool.size <= CFG.max_conns
        # FIFO: nobody still waiting arrived before someone already served.
        if self.pending:
            assert min(seq for seq, _ in self.pending) > self.newest_served

    def teardown(self) -> None:
        tasks = [task for _, task in self.pending]
        for task in tasks:
            task.cancel()
        self.run(eventually(lambda: all(task.done() for task in tasks), interval=0))
        self.run(self.pool.aclose())
        self.loop.close()


TestPoolMachine = PoolMachine.TestCase
TestPoolMachine.settings = settings(max_examples=300, stateful_step_count=30, deadline=None)
