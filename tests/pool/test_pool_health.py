"""Background health, prewarm bounds and the manager, on an injected clock."""

from __future__ import annotations

import asyncio

import pytest

from pool import AccountPool, DialFailed, PoolClosed, PoolConfig, PoolManager
from pool.invariants import check_invariants
from tests.pool.fakes import FakeDialer
from tests.support import FakeClock, eventually


def make_pool(**cfg: object) -> tuple[AccountPool, FakeDialer, FakeClock]:
    clock = FakeClock()
    dialer = FakeDialer(clock)
    return AccountPool("acct", dialer, PoolConfig(**cfg), clock), dialer, clock  # type: ignore[arg-type]


async def idle_pool(count: int, **cfg: object) -> tuple[AccountPool, FakeDialer, FakeClock]:
    """A pool holding ``count`` idle sockets, released one second apart (dialed[0] oldest)."""
    pool, dialer, clock = make_pool(**cfg)
    leases = [await pool.acquire() for _ in range(count)]
    for lease in leases:
        clock.advance(1)
        lease.release()
    return pool, dialer, clock


# -- background ping ----------------------------------------------------------------------


async def test_background_ping_drops_a_failing_idle_socket() -> None:
    pool, dialer, clock = await idle_pool(3, ping_interval_s=30)
    await pool.maintain_once()
    assert [c.pings for c in dialer.dialed] == [0, 0, 0]  # all recently used
    clock.advance(31)
    dialer.dialed[1].ping_fails = True
    await pool.maintain_once()
    assert [c.pings for c in dialer.dialed] == [1, 1, 1]
    await eventually(lambda: dialer.dialed[1].closed, what="the failed socket closed")
    assert not pool.has_conn(dialer.dialed[1].conn_id)
    assert pool.stats().pings_failed == 1 and pool.stats().idle == 2
    # The survivors went back in their old order: the least recently used first.
    lease = await pool.acquire()
    assert lease.conn_id == dialer.dialed[0].conn_id and dialer.dialed[0].pings == 1
    check_invariants(pool)


async def test_a_pinged_socket_is_not_pinged_again_until_the_interval_passes() -> None:
    pool, dialer, clock = await idle_pool(1, ping_interval_s=30, ping_before_lease_idle_s=20)
    clock.advance(31)
    await pool.maintain_once()
    clock.advance(10)
    await pool.maintain_once()
    assert dialer.dialed[0].pings == 1
    lease = await pool.acquire()  # 10 s since the ping proved it alive: no ping-before-lease
    assert lease.reused and dialer.dialed[0].pings == 1


async def test_background_ping_that_hangs_times_out() -> None:
    pool, dialer, clock = await idle_pool(1, ping_interval_s=30, ping_timeout_s=0.01)
    dialer.dialed[0].ping_gate = asyncio.Event()  # never answers
    clock.advance(31)
    await pool.maintain_once()
    assert pool.stats().pings_failed == 1 and pool.size == 0


async def test_a_socket_being_pinged_is_not_leased_and_comes_back() -> None:
    pool, dialer, clock = await idle_pool(1, ping_interval_s=30, ping_before_lease_idle_s=1e9)
    conn = dialer.dialed[0]
    conn.ping_gate = asyncio.Event()
    clock.advance(31)
    sweep = asyncio.create_task(pool.maintain_once())
    await eventually(lambda: conn.pings == 1)
    lease = await pool.acquire(preferred_conn_id=conn.conn_id)  # mid-ping: never shared
    assert lease.conn_id != conn.conn_id and not lease.preferred_hit
    conn.ping_gate.set()
    await sweep
    assert pool.has_idle(conn.conn_id)


# -- max age ------------------------------------------------------------------------------


async def test_max_age_closes_idle_sockets_in_the_background() -> None:
    pool, dialer, clock = await idle_pool(2, max_age_s=100)
    clock.advance(97)  # dialed at t=1000, released at 1001 and 1002; now 1099
    await pool.maintain_once()
    assert pool.stats().idle == 2
    clock.advance(1)  # exactly max_age since the dials
    await pool.maintain_once()
    await eventually(lambda: all(c.closed for c in dialer.dialed), what="aged sockets closed")
    assert pool.stats().expired == 2 and pool.size == 0


async def test_an_expired_idle_socket_is_not_leased_before_the_sweep() -> None:
    pool, dialer, clock = await idle_pool(1, max_age_s=100)
    clock.advance(200)
    lease = await pool.acquire(preferred_conn_id=dialer.dialed[0].conn_id)
    assert not lease.reused and not lease.preferred_hit and pool.stats().expired == 1


async def test_a_leased_socket_past_max_age_is_closed_on_release() -> None:
    pool, dialer, clock = make_pool(max_age_s=100)
    lease = await pool.acquire()
    clock.advance(101)
    await pool.maintain_once()
    assert not dialer.dialed[0].closed  # in use: never pulled from under a response
    lease.release(bound=True)
    await eventually(lambda: dialer.dialed[0].closed, what="the aged socket closed")
    assert pool.stats().expired == 1 and pool.size == 0


# -- idle trimming ------------------------------------------------------------------------


async def test_idle_trimming_drops_least_recently_used_unbound_first() -> None:
    pool, dialer, clock = make_pool(max_idle=2)
    leases = [await pool.acquire() for _ in range(4)]
    # Release order (oldest first): bound#0, free#1, bound#2, free#3.
    for i, lease in enumerate(leases):
        clock.advance(1)
        lease.release(bound=i % 2 == 0)
    await pool.maintain_once()
    assert pool.stats().trimmed == 2
    await eventually(lambda: sum(c.closed for c in dialer.dialed) == 2, what="trimmed closed")
    assert [c.closed for c in dialer.dialed] == [False, True, False, True]
    assert pool.stats().trimmed == 2 and pool.stats().idle == 2


async def test_idle_trimming_among_bound_sockets_drops_the_least_recently_used() -> None:
    pool, dialer, clock = make_pool(max_idle=1)
    leases = [await pool.acquire() for _ in range(2)]
    for lease in leases:
        clock.advance(1)
        lease.release(bound=True)
    await pool.maintain_once()
    await eventually(lambda: dialer.dialed[0].closed, what="the trimmed socket closed")
    assert [c.closed for c in dialer.dialed] == [True, False]


# -- ping before lease --------------------------------------------------------------------


async def test_ping_before_lease_drops_a_half_open_socket_and_tries_the_next() -> None:
    pool, dialer, clock = await idle_pool(2, ping_before_lease_idle_s=20)
    clock.advance(21)
    dialer.dialed[0].ping_fails = True  # the heap top is half-open
    lease = await pool.acquire()
    assert lease.conn_id == dialer.dialed[1].conn_id and lease.reused
    assert dialer.dialed[0].pings == 1 and dialer.dialed[1].pings == 1
    assert pool.stats().pings_failed == 1 and not pool.has_conn(dialer.dialed[0].conn_id)
    lease.release()
    clock.advance(5)  # recently used: no ping before this lease
    again = await pool.acquire()
    assert again.conn_id == lease.conn_id and dialer.dialed[1].pings == 1


async def test_ping_before_lease_applies_to_the_preferred_socket() -> None:
    pool, dialer, clock = await idle_pool(2, ping_before_lease_idle_s=20)
    clock.advance(21)
    preferred = dialer.dialed[1]
    preferred.ping_fails = True
    lease = await pool.acquire(preferred_conn_id=preferred.conn_id)
    assert lease.conn_id == dialer.dialed[0].conn_id and not lease.preferred_hit


async def test_cancel_during_ping_before_lease_returns_the_socket() -> None:
    pool, dialer, clock = await idle_pool(1, ping_before_lease_idle_s=20)
    conn = dialer.dialed[0]
    conn.ping_gate = asyncio.Event()
    clock.advance(21)
    acquiring = asyncio.create_task(pool.acquire())
    await eventually(lambda: conn.pings == 1)
    acquiring.cancel()
    with pytest.raises(asyncio.CancelledError):
        await acquiring
    assert pool.has_idle(conn.conn_id) and pool.stats().leased == 0
    check_invariants(pool)
    conn.ping_gate.set()
    lease = await pool.acquire()  # still unproven: pinged again, then leased
    assert lease.conn_id == conn.conn_id and conn.pings == 2


# -- prewarm --------------------------------------------------------------------------------


async def test_a_burst_of_acquires_starts_at_most_one_prewarm_task() -> None:
    pool, dialer, clock = make_pool(min_idle=2, max_conns=2000, prewarm_cooldown_s=1)
    # 1,000 concurrent acquires on an empty pool, all dialing at once.
    dialer.gate = asyncio.Event()
    burst = [asyncio.create_task(pool.acquire()) for _ in range(1000)]
    await eventually(lambda: dialer.attempts == 1000)
    dialer.gate.set()
    leases = await asyncio.gather(*burst)
    await pool.wait_prewarm()
    assert pool.stats().prewarm_runs == 1  # one task for the whole burst
    assert pool.stats().idle == 2 and len(dialer.dialed) == 1002
    for lease in leases:
        lease.release(broken=True)
    await eventually(lambda: all(lease.conn.closed for lease in leases), what="broken closed")

    # Acquire/release cycles while a prewarm round is stuck dialing: still one task,
    # even once the cooldown has long passed.
    dialer.gate = asyncio.Event()
    clock.advance(1)
    held = await pool.acquire()  # idle 2 -> 1, below min_idle: a round starts
    await eventually(lambda: dialer.attempts == 1003, what="the round's dial")
    # A second round would be counted the moment it was spawned, so no waiting is needed
    # to see that none was.
    for _ in range(1000):
        lease = await pool.acquire()
        lease.release()
    assert pool.stats().prewarm_runs == 2 and pool.prewarm_running
    assert dialer.attempts == 1003  # the round's one dial, waiting on the gate
    clock.advance(60)
    for _ in range(1000):
        lease = await pool.acquire()
        lease.release()
    assert pool.stats().prewarm_runs == 2 and dialer.attempts == 1003
    dialer.gate.set()
    await pool.wait_prewarm()
    assert pool.stats().idle == 2
    held.release()
    await pool.aclose()


async def test_prewarm_fills_to_min_idle_and_respects_the_cooldown() -> None:
    pool, dialer, clock = make_pool(min_idle=3, prewarm_cooldown_s=1)
    await pool.maintain_once()  # an account with no traffic is topped up too
    await pool.wait_prewarm()
    assert pool.stats().idle == 3 and pool.stats().prewarm_runs == 1
    leases = [await pool.acquire() for _ in range(3)]
    await pool.wait_prewarm()
    assert pool.stats().prewarm_runs == 1 and pool.stats().idle == 0  # cooling down
    clock.advance(1)
    await pool.maintain_once()
    await pool.wait_prewarm()
    assert pool.stats().prewarm_runs == 2 and pool.stats().idle == 3
    assert all(lease.reused for lease in leases) and len(dialer.dialed) == 6


async def test_prewarm_never_exceeds_max_conns() -> None:
    pool, dialer, _ = make_pool(min_idle=5, max_conns=2)
    await pool.maintain_once()
    await pool.wait_prewarm()
    assert len(dialer.dialed) == 2 and pool.size == 2


async def test_prewarm_stops_when_dials_keep_failing_and_reopens_later() -> None:
    pool, dialer, clock = make_pool(
        min_idle=4,
        prewarm_cooldown_s=1,
        prewarm_failure_threshold=2,
        prewarm_failure_window_s=30,
        prewarm_reopen_s=60,
    )
    dialer.fail = True
    await pool.maintain_once()
    await pool.wait_prewarm()
    # The gate tripped after the second failure: the round stopped there.
    assert dialer.attempts == 2 and pool.stats().prewarm_gate_trips == 1
    assert not pool.prewarm_gate_open()
    for _ in range(5):  # cooldowns pass, the gate stays shut
        clock.advance(10)
        await pool.maintain_once()
        await pool.wait_prewarm()
    assert dialer.attempts == 2 and pool.stats().prewarm_runs == 1
    dialer.fail = False
    clock.advance(10)  # 60 s since the trip: reopened
    assert pool.prewarm_gate_open()
    await pool.maintain_once()
    await pool.wait_prewarm()
    assert pool.stats().prewarm_runs == 2 and pool.stats().idle == 4


async def test_sparse_dial_failures_do_not_trip_the_gate() -> None:
    pool, dialer, clock = make_pool(prewarm_failure_threshold=2, prewarm_failure_window_s=30)
    for _ in range(3):
        dialer.fail_next = 1
        with pytest.raises(DialFailed):
            await pool.acquire()
        clock.advance(31)  # outside the window of the previous failure
    assert pool.prewarm_gate_open() and pool.stats().prewarm_gate_trips == 0
    dialer.fail_next = 1
    with pytest.raises(DialFailed):
        await pool.acquire()
    held = await pool.acquire()  # a success in between resets the count
    assert not held.reused
    dialer.fail_next = 1
    with pytest.raises(DialFailed):
        await pool.acquire()
    assert pool.prewarm_gate_open() and dialer.attempts == 6


# -- the manager --------------------------------------------------------------------------


async def test_manager_pools_per_account_and_closes_everything() -> None:
    clock = FakeClock()
    dialer = FakeDialer(clock)
    manager = PoolManager(
        dialer, PoolConfig(), clock=clock, per_account={"a": PoolConfig(max_conns=2)}
    )
    assert set(manager.stats()) == {"a"}  # configured accounts exist before traffic
    assert manager.pool("a").config.max_conns == 2
    assert manager.pool("b").config.max_conns == 128 and manager.pool("b") is manager.pool("b")
    lease = await manager.pool("a").acquire()
    lease.release()
    held = await manager.pool("b").acquire()
    manager.start()
    await manager.aclose()
    assert dialer.dialed[0].closed and not dialer.dialed[1].closed
    held.release()
    await eventually(lambda: dialer.dialed[1].closed, what="the late-returned socket closed")
    with pytest.raises(PoolClosed):
        await manager.pool("c").acquire()


async def test_manager_background_task_cleans_accounts_without_traffic() -> None:
    clock = FakeClock()
    dialer = FakeDialer(clock)
    cfg = PoolConfig(maintenance_interval_s=0.001, max_age_s=100)
    manager = PoolManager(dialer, cfg, clock=clock)
    (await manager.pool("quiet").acquire()).release()
    manager.start()
    clock.advance(101)  # no more acquires: only the background task can notice
    await eventually(lambda: dialer.dialed[0].closed)
    assert manager.stats()["quiet"].expired == 1
    await manager.aclose()


async def test_manager_maintenance_survives_a_failing_account(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    manager = PoolManager(FakeDialer(clock), PoolConfig(), clock=clock)
    bad = manager.pool("bad")
    good = manager.pool("good")
    (await good.acquire()).release()

    async def boom() -> None:
        raise RuntimeError("maintenance bug")

    bad.maintain_once = boom  # type: ignore[method-assign]
    clock.advance(10_000)
    await manager.maintain_once()
    assert good.stats().expired == 1
    assert "pool maintenance failed for account bad" in caplog.text
    await manager.aclose()
