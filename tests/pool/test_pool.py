"""Pool behaviour with fake sockets and an injected clock: no sleeps, no network."""

from __future__ import annotations

import asyncio

import pytest

from pool import (
    AccountPool,
    DialFailed,
    Lease,
    PoolClosed,
    PoolConfig,
    PoolError,
    PoolExhausted,
)
from pool.invariants import check_invariants
from tests.pool.fakes import FakeConn, FakeDialer
from tests.support import FakeClock, eventually


def make_pool(**cfg: object) -> tuple[AccountPool, FakeDialer, FakeClock]:
    clock = FakeClock()
    dialer = FakeDialer(clock)
    return AccountPool("acct", dialer, PoolConfig(**cfg), clock), dialer, clock  # type: ignore[arg-type]


async def queued(pool: AccountPool, count: int) -> None:
    """Wait until ``count`` acquires are queued."""
    await eventually(lambda: pool.stats().waiters >= count)


# -- acquire / release -------------------------------------------------------------------


async def test_release_then_acquire_reuses_and_preferred_is_the_fast_path() -> None:
    pool, dialer, clock = make_pool()
    a = await pool.acquire()
    b = await pool.acquire()
    assert (a.reused, b.reused) == (False, False) and a.account_id == "acct"
    a.release()
    clock.advance(1)
    b.release()
    again = await pool.acquire(preferred_conn_id=b.conn_id)
    # b is the most recently used: only the preferred path hands it out before a.
    assert again.conn_id == b.conn_id and again.preferred_hit and again.reused
    assert again.waited_s == 0.0
    other = await pool.acquire(preferred_conn_id=b.conn_id)  # leased: take another, no wait
    assert other.conn_id == a.conn_id and not other.preferred_hit and other.reused
    assert len(dialer.dialed) == 2
    stats = pool.stats()
    assert (stats.acquires, stats.reuses, stats.preferred_hits) == (4, 2, 1)
    assert stats.reuse_ratio == pytest.approx(0.5)
    assert (stats.size, stats.idle, stats.leased) == (2, 0, 2)


async def test_a_socket_ready_as_is_is_leased_without_awaiting() -> None:
    pool, dialer, clock = make_pool(ping_before_lease_idle_s=10)
    assert pool.acquire_ready() is None  # nothing idle: acquire must dial
    a = await pool.acquire()
    b = await pool.acquire()
    a.release()
    clock.advance(1)
    b.release()
    mine = pool.acquire_ready(preferred_conn_id=a.conn_id)
    assert mine is not None and mine.conn_id == a.conn_id and mine.preferred_hit and mine.reused
    mine.release()
    clock.advance(1)
    cheapest = pool.acquire_ready()  # no preference: the least recently used unbound one
    assert cheapest is not None and cheapest.conn_id == b.conn_id and not cheapest.preferred_hit
    cheapest.release()
    clock.advance(10)  # a: quiet past the ping threshold, it needs a ping first
    assert pool.acquire_ready(preferred_conn_id=a.conn_id) is None
    pinged = await pool.acquire(preferred_conn_id=a.conn_id)
    assert pinged.conn_id == a.conn_id and dialer.by_id(a.conn_id).pings == 1
    stats = pool.stats()
    assert (stats.acquires, stats.reuses, stats.preferred_hits) == (5, 3, 2)


async def test_preferred_that_is_gone_gets_another_socket() -> None:
    pool, _, _ = make_pool()
    gone = await pool.acquire()
    keep = await pool.acquire()
    gone.release(broken=True)
    keep.release()
    lease = await pool.acquire(preferred_conn_id=gone.conn_id)
    assert lease.conn_id == keep.conn_id and not lease.preferred_hit
    lease2 = await pool.acquire(preferred_conn_id="never-existed")
    assert not lease2.reused and not lease2.preferred_hit


async def test_unbound_sockets_go_to_new_conversations_first() -> None:
    pool, _, clock = make_pool()
    bound = await pool.acquire()
    free = await pool.acquire()
    bound.release(bound=True)  # holds a store:false conversation's previous response
    clock.advance(5)
    free.release()  # more recently used, but unbound
    first = await pool.acquire()
    second = await pool.acquire()
    assert (first.conn_id, second.conn_id) == (free.conn_id, bound.conn_id)


async def test_least_recently_used_first_among_unbound() -> None:
    pool, _, clock = make_pool()
    leases = [await pool.acquire() for _ in range(3)]
    for lease in reversed(leases):  # released last-to-first: leases[0] is the newest
        clock.advance(1)
        lease.release()
    order = [(await pool.acquire()).conn_id for _ in range(3)]
    assert order == [leases[2].conn_id, leases[1].conn_id, leases[0].conn_id]


async def test_broken_sockets_never_return_and_release_is_idempotent() -> None:
    pool, dialer, _ = make_pool()
    lease = await pool.acquire()
    lease.release(broken=True)
    lease.release()  # ignored
    lease.release(broken=True)  # ignored
    assert lease.released
    await eventually(lambda: dialer.dialed[0].closed, what="the broken socket closed")
    assert dialer.dialed[0].close_calls == 1
    fresh = await pool.acquire()
    assert fresh.conn_id != lease.conn_id and not fresh.reused
    stats = pool.stats()
    assert (stats.broken, stats.size, stats.leased) == (1, 1, 1)


async def test_a_socket_known_dead_is_never_leased() -> None:
    pool, dialer, _ = make_pool()
    lease = await pool.acquire()
    lease.release()
    dialer.dialed[0].closed = True  # the socket noticed an upstream close while idle
    fresh = await pool.acquire(preferred_conn_id=lease.conn_id)
    assert fresh.conn_id != lease.conn_id and not fresh.preferred_hit
    assert not pool.has_conn(lease.conn_id)


async def test_a_socket_closed_while_leased_is_dropped_on_release() -> None:
    pool, dialer, _ = make_pool()
    lease = await pool.acquire()
    dialer.dialed[0].closed = True
    lease.release()
    assert not pool.has_conn(lease.conn_id) and pool.stats().idle == 0


async def test_a_dialer_returning_a_duplicate_id_is_refused() -> None:
    class SameIdDialer:
        async def dial(self, account_id: str) -> FakeConn:
            return FakeConn("same")

    pool = AccountPool("acct", SameIdDialer(), PoolConfig(), FakeClock())
    await pool.acquire()
    with pytest.raises(PoolError, match="duplicate"):
        await pool.acquire()
    assert pool.size == 1


# -- limits and the wait queue ------------------------------------------------------------


async def test_waiters_are_served_in_order_and_the_queue_is_bounded() -> None:
    pool, _, _ = make_pool(max_conns=1, queue_limit=2, acquire_timeout_s=5)
    held = await pool.acquire()
    order: list[str] = []

    async def wait(name: str) -> Lease:
        lease = await pool.acquire()
        order.append(name)
        return lease

    first = asyncio.create_task(wait("first"))
    await queued(pool, 1)
    second = asyncio.create_task(wait("second"))
    await queued(pool, 2)
    with pytest.raises(PoolExhausted) as info:
        await pool.acquire()
    assert str(info.value) == (
        "pool exhausted for account acct: 1/1 connections leased and 2 waiters (queue limit 2)"
    )
    held.release()
    lease1 = await first
    assert lease1.conn_id == held.conn_id and lease1.reused and lease1.waited_s >= 0.0
    lease1.release()
    lease2 = await second
    assert order == ["first", "second"] and lease2.conn_id == held.conn_id
    stats = pool.stats()
    assert (stats.waits, stats.exhausted, stats.size) == (2, 1, 1)


async def test_a_newcomer_does_not_overtake_a_waiter() -> None:
    pool, _, _ = make_pool(max_conns=1)
    held = await pool.acquire()
    waiter = asyncio.create_task(pool.acquire())
    await queued(pool, 1)
    held.release()  # handed straight to the waiter, not to the heap
    assert pool.stats().idle == 0
    newcomer = asyncio.create_task(pool.acquire(timeout=5))
    lease = await waiter
    assert lease.conn_id == held.conn_id and not newcomer.done()
    lease.release()
    assert (await newcomer).conn_id == held.conn_id


async def test_wait_times_out_with_a_clear_error() -> None:
    pool, _, _ = make_pool(max_conns=1)
    await pool.acquire()
    with pytest.raises(PoolExhausted, match=r"^timed out after 0.01s waiting for a connection"):
        await pool.acquire(timeout=0.01)
    stats = pool.stats()
    assert (stats.exhausted, stats.waiters) == (1, 0)
    check_invariants(pool)


async def test_cancelled_waiter_handed_a_socket_puts_it_back() -> None:
    pool, _, _ = make_pool(max_conns=1)
    held = await pool.acquire()
    waiter = asyncio.create_task(pool.acquire())
    await queued(pool, 1)
    held.release()  # handed to the waiter...
    waiter.cancel()  # ...which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await waiter
    check_invariants(pool)
    assert pool.has_idle(held.conn_id) and pool.stats().waiters == 0
    lease = await pool.acquire(timeout=0.1)
    assert lease.conn_id == held.conn_id and lease.reused


async def test_cancelled_waiter_handed_a_socket_passes_it_to_the_next_waiter() -> None:
    pool, _, _ = make_pool(max_conns=1)
    held = await pool.acquire()
    first = asyncio.create_task(pool.acquire())
    await queued(pool, 1)
    second = asyncio.create_task(pool.acquire())
    await queued(pool, 2)
    held.release()
    first.cancel()
    lease = await second
    assert lease.conn_id == held.conn_id
    assert first.cancelled()
    check_invariants(pool)


async def test_cancelled_waiter_handed_a_free_slot_gives_the_slot_back() -> None:
    pool, dialer, _ = make_pool(max_conns=1)
    held = await pool.acquire()
    waiter = asyncio.create_task(pool.acquire())
    await queued(pool, 1)
    held.release(broken=True)  # frees the slot: reserved for the waiter to dial
    assert pool.stats().dialing == 1
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert pool.stats().dialing == 0 and pool.size == 0
    lease = await pool.acquire(timeout=0.1)
    assert not lease.reused and len(dialer.dialed) == 2


async def test_cancelled_waiter_leaves_the_queue() -> None:
    pool, _, _ = make_pool(max_conns=1, queue_limit=1)
    held = await pool.acquire()
    waiter = asyncio.create_task(pool.acquire())
    await queued(pool, 1)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert pool.stats().waiters == 0
    second = asyncio.create_task(pool.acquire())  # the queue has room again
    await queued(pool, 1)
    held.release()
    assert (await second).conn_id == held.conn_id


async def test_a_newcomer_behind_a_cancelled_waiter_gets_the_free_slot() -> None:
    pool, _, _ = make_pool(max_conns=1)
    held = await pool.acquire()
    waiter = asyncio.create_task(pool.acquire())
    await queued(pool, 1)
    waiter.cancel()  # cancelled, but it has not run yet: still in the queue
    held.release(broken=True)  # the freed slot finds no live waiter
    lease = await pool.acquire(timeout=2)
    assert not lease.reused and pool.size == 1
    with pytest.raises(asyncio.CancelledError):
        await waiter
    check_invariants(pool)
    assert pool.stats().waiters == 0 and pool.stats().dialing == 0


async def test_waiter_handed_a_dead_socket_dials_into_its_slot() -> None:
    pool, dialer, _ = make_pool(max_conns=1)
    held = await pool.acquire()
    first = asyncio.create_task(pool.acquire())
    await queued(pool, 1)
    second = asyncio.create_task(pool.acquire())
    await queued(pool, 2)
    held.release()  # handed to the first waiter...
    dialer.dialed[0].closed = True  # ...and the socket dies before that waiter runs
    lease = await first
    assert not lease.reused and lease.conn_id == dialer.dialed[1].conn_id
    assert not second.done()  # the slot stayed with the first waiter: FIFO holds
    lease.release()
    assert (await second).conn_id == lease.conn_id
    assert pool.size == 1


async def test_dial_failure_frees_the_slot_and_keeps_the_cause() -> None:
    pool, dialer, _ = make_pool(max_conns=1)
    dialer.fail = True
    with pytest.raises(DialFailed) as info:
        await pool.acquire()
    assert isinstance(info.value.__cause__, ConnectionRefusedError)
    assert info.value.account_id == "acct" and "acct" in str(info.value)
    assert pool.size == 0 and pool.stats().dial_failures == 1
    dialer.fail = False
    lease = await pool.acquire()
    assert not lease.reused and pool.size == 1


async def test_a_failed_dial_lets_a_waiter_dial() -> None:
    pool, dialer, _ = make_pool(max_conns=1)
    dialer.gate = asyncio.Event()
    dialer.fail_next = 1  # the first dial fails, the next one succeeds
    first = asyncio.create_task(pool.acquire())
    await eventually(lambda: pool.stats().dialing == 1)
    second = asyncio.create_task(pool.acquire())
    await queued(pool, 1)  # at max_conns (one dial in flight): queued
    dialer.gate.set()
    with pytest.raises(DialFailed):
        await first
    lease = await second
    assert not lease.reused and pool.size == 1 and dialer.attempts == 2


async def test_max_conns_is_never_exceeded_under_a_burst() -> None:
    pool, dialer, _ = make_pool(max_conns=3, queue_limit=100)
    dialer.gate = asyncio.Event()
    tasks = [asyncio.create_task(pool.acquire()) for _ in range(20)]
    await queued(pool, 17)
    assert pool.stats().dialing == 3 and dialer.attempts == 3
    dialer.gate.set()
    served = 0

    def release_the_served() -> bool:
        nonlocal served
        for task in [t for t in tasks if t.done()]:
            tasks.remove(task)
            task.result().release()
            served += 1
            check_invariants(pool)
        return served == 20

    await eventually(release_the_served, what="all 20 acquires served")
    assert len(dialer.dialed) == 3 and pool.stats().idle == 3


async def test_closed_pool_refuses_and_fails_waiters() -> None:
    pool, dialer, _ = make_pool(max_conns=1)
    held = await pool.acquire()
    waiter = asyncio.create_task(pool.acquire())
    await queued(pool, 1)
    await pool.aclose()
    with pytest.raises(PoolClosed):
        await waiter
    with pytest.raises(PoolClosed):
        await pool.acquire()
    held.release()  # a socket leased at close is closed when it comes back
    assert pool.size == 0
    await eventually(lambda: dialer.dialed[0].closed, what="the returned socket closed")
