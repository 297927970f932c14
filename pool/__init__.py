"""Per-account upstream connection pool with an indexed heap; the dialer is injected."""

from pool.lease import Lease
from pool.manager import PoolManager
from pool.pool import AccountPool
from pool.types import (
    Clock,
    Conn,
    Dialer,
    DialFailed,
    PoolClosed,
    PoolConfig,
    PoolError,
    PoolExhausted,
    PoolStats,
)

__all__ = [
    "AccountPool",
    "Clock",
    "Conn",
    "DialFailed",
    "Dialer",
    "Lease",
    "PoolClosed",
    "PoolConfig",
    "PoolError",
    "PoolExhausted",
    "PoolManager",
    "PoolStats",
]
