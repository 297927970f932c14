"""What must hold of a pool between any two steps: its heap and index agree, every idle
socket is owned, the counts add up, limits hold, and nobody waits while a socket or a slot
is free. Tests and the pool bench check it; the pool never calls it."""

from __future__ import annotations

from pool.pool import AccountPool


def check_invariants(pool: AccountPool) -> None:
    """Raise AssertionError naming the first invariant that does not hold."""
    pool._idle.check()
    for entry in pool._idle:
        if pool._conns.get(entry.conn_id) is not entry:
            raise AssertionError(f"idle {entry.conn_id} is not owned by the pool")
    dialing, leased = pool._dialing, pool._leased
    if not 0 <= dialing or not 0 <= leased <= len(pool._conns) - len(pool._idle):
        raise AssertionError(f"counts off: dialing={dialing} leased={leased}")
    if pool.size > pool.config.max_conns:
        raise AssertionError(f"{pool.size} sockets exceed max_conns={pool.config.max_conns}")
    if pool._waiters.anyone_waiting() and (pool._idle or pool.size < pool.config.max_conns):
        raise AssertionError("waiters queued while a socket or a slot is free")
