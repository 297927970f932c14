"""The pool's small interfaces: connections and dialers are injected (httpx-transport style)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import msgspec

Clock = Callable[[], float]


class Conn(Protocol):
    """One upstream socket as the pool sees it."""

    @property
    def conn_id(self) -> str: ...

    @property
    def closed(self) -> bool: ...

    async def ping(self, timeout: float) -> None: ...

    async def aclose(self) -> None: ...


class Dialer(Protocol):
    async def dial(self, account_id: str) -> Conn: ...


class PoolConfig(msgspec.Struct, frozen=True, kw_only=True):
    max_conns: int = 128
    min_idle: int = 0
    max_idle: int = 12
    queue_limit: int = 256
    acquire_timeout_s: float = 12.0
    ping_before_lease_idle_s: float = 20.0
    ping_timeout_s: float = 2.0
    ping_interval_s: float = 30.0
    max_age_s: float = 55 * 60.0
    maintenance_interval_s: float = 5.0
    prewarm_cooldown_s: float = 0.3
    prewarm_failure_window_s: float = 30.0
    prewarm_failure_threshold: int = 2
    prewarm_reopen_s: float = 30.0


class PoolStats(msgspec.Struct, kw_only=True):
    size: int = 0
    idle: int = 0
    leased: int = 0
    dialing: int = 0
    waiters: int = 0
    acquires: int = 0
    dials: int = 0
    dial_failures: int = 0
    reuses: int = 0
    reuse_ratio: float = 0.0
    preferred_hits: int = 0
    broken: int = 0
    pings_failed: int = 0
    waits: int = 0
    exhausted: int = 0
    expired: int = 0
    trimmed: int = 0
    prewarm_runs: int = 0
    prewarm_gate_trips: int = 0


class PoolError(Exception):
    pass


class PoolExhausted(PoolError):
    pass


class PoolClosed(PoolError):
    pass


class DialFailed(PoolError):
    def __init__(self, account_id: str, message: str) -> None:
        self.account_id = account_id
        super().__init__(message)
