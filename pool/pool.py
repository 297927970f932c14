"""Per-account upstream connection pool (R-13, R-15, R-16).

A connection is leased (one response in flight) or idle in the indexed heap. Acquire
takes the preferred connection by id when it is idle, else the heap top; dials when
under ``max_conns``; else waits in a bounded FIFO queue. Released connections go
straight to the oldest waiter. Broken, closed or expired connections never return.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Coroutine, Mapping
from typing import Any

from pool.heap import Entry, IndexedHeap
from pool.types import (
    Clock,
    Conn,
    Dialer,
    DialFailed,
    PoolClosed,
    PoolConfig,
    PoolExhausted,
    PoolStats,
)

log = logging.getLogger("pool")

# A waiter is woken either with a connection handed over, or with None: "a slot is free, dial".
_Waiter = asyncio.Future[Entry | None]


class Lease:
    __slots__ = (
        "_entry",
        "_pool",
        "_released",
        "account_id",
        "conn",
        "conn_id",
        "preferred_hit",
        "reused",
        "waited_s",
    )

    def __init__(
        self, pool: AccountPool, entry: Entry, *, reused: bool, preferred_hit: bool, waited_s: float
    ) -> None:
        self._pool = pool
        self._entry = entry
        self._released = False
        self.conn: Conn = entry.conn
        self.conn_id = entry.conn_id
        self.account_id = pool.account_id
        self.reused = reused
        self.preferred_hit = preferred_hit
        self.waited_s = waited_s

    def release(self, *, broken: bool = False, bound: bool = False) -> None:
        """Give the connection back (idempotent). ``broken`` retires it for good."""
        if self._released:
            return
        self._released = True
        self._pool._release(self._entry, broken=broken, bound=bound)


class AccountPool:
    def __init__(self, account_id: str, dialer: Dialer, config: PoolConfig, clock: Clock) -> None:
        self.account_id = account_id
        self.config = config
        self._dialer = dialer
        self._clock = clock
        self._idle = IndexedHeap()
        self._all: dict[str, Entry] = {}
        self._dialing = 0
        self._waiters: collections.deque[_Waiter] = collections.deque()
        self._closed = False
        self._prewarm_task: asyncio.Task[None] | None = None
        self._prewarm_next = 0.0
        self._prewarm_failures: collections.deque[float] = collections.deque()
        self._prewarm_blocked_until = 0.0
        self._background: set[asyncio.Task[None]] = set()
        self._stats = PoolStats()

    # -- inspection --------------------------------------------------------------------
    @property
    def size(self) -> int:
        return len(self._all) + self._dialing

    def idle_conns(self) -> list[Conn]:
        return [entry.conn for entry in self._idle.entries()]

    def has_idle(self, conn_id: str) -> bool:
        return conn_id in self._idle

    def has_conn(self, conn_id: str) -> bool:
        return conn_id in self._all

    def stats(self) -> PoolStats:
        s = self._stats
        s.size = len(self._all)
        s.idle = len(self._idle)
        s.leased = len(self._all) - len(self._idle)
        s.dialing = self._dialing
        s.waiters = len(self._waiters)
        s.reuse_ratio = s.reuses / s.acquires if s.acquires else 0.0
        return s

    def _check_invariants(self) -> None:
        self._idle.check()
        for entry in self._idle.entries():
            assert self._all.get(entry.conn_id) is entry
        assert self.size <= self.config.max_conns

    # -- acquire -----------------------------------------------------------------------
    async def acquire(
        self, *, preferred_conn_id: str | None = None, timeout: float | None = None
    ) -> Lease:
        if self._closed:
            raise PoolClosed(f"pool for account {self.account_id} is closed")
        self._stats.acquires += 1
        started = time.monotonic()
        limit = self.config.acquire_timeout_s if timeout is None else timeout
        try:
            if preferred_conn_id is not None:
                entry = self._idle.remove(preferred_conn_id)
                if entry is not None and await self._usable(entry):
                    self._stats.reuses += 1
                    self._stats.preferred_hits += 1
                    return self._lease(entry, reused=True, preferred_hit=True, started=started)
            while True:
                entry = await self._take_idle()
                if entry is not None:
                    self._stats.reuses += 1
                    return self._lease(entry, reused=True, preferred_hit=False, started=started)
                if self.size < self.config.max_conns:
                    entry = await self._dial()
                    return self._lease(entry, reused=False, preferred_hit=False, started=started)
                handed = await self._wait(started, limit)
                if handed is not None:
                    self._stats.reuses += 1
                    return self._lease(
                        handed,
                        reused=True,
                        preferred_hit=handed.conn_id == preferred_conn_id,
                        started=started,
                    )
        finally:
            self._maybe_prewarm()

    def _lease(self, entry: Entry, *, reused: bool, preferred_hit: bool, started: float) -> Lease:
        entry.released = False
        return Lease(
            self,
            entry,
            reused=reused,
            preferred_hit=preferred_hit,
            waited_s=time.monotonic() - started,
        )

    async def _usable(self, entry: Entry) -> bool:
        """Health gate for an idle entry already removed from the heap."""
        now = self._clock()
        if entry.conn.closed or now - entry.created_at >= self.config.max_age_s:
            self._drop(entry, expired=not entry.conn.closed)
            return False
        if now - entry.last_used >= self.config.ping_before_lease_idle_s:
            try:
                await entry.conn.ping(self.config.ping_timeout_s)
            except Exception:
                self._stats.pings_failed += 1
                self._drop(entry)
                return False
            entry.last_checked = self._clock()
        return True

    async def _take_idle(self) -> Entry | None:
        while True:
            entry = self._idle.pop()
            if entry is None:
                return None
            if await self._usable(entry):
                return entry

    async def _dial(self) -> Entry:
        self._dialing += 1
        self._stats.dials += 1
        try:
            conn = await self._dialer.dial(self.account_id)
        except BaseException as exc:
            self._dialing -= 1
            self._stats.dial_failures += 1
            self._wake_dialer()  # the slot we reserved is free again
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise DialFailed(
                self.account_id, f"dial to account {self.account_id} failed: {exc}"
            ) from exc
        self._dialing -= 1
        now = self._clock()
        entry = Entry(
            conn=conn, conn_id=conn.conn_id, created_at=now, last_used=now, last_checked=now
        )
        self._all[entry.conn_id] = entry
        return entry

    async def _wait(self, started: float, limit: float) -> Entry | None:
        if len(self._waiters) >= self.config.queue_limit:
            self._stats.exhausted += 1
            raise PoolExhausted(
                f"pool exhausted for account {self.account_id}: {self.size}/{self.config.max_conns} "
                f"connections in use and {len(self._waiters)} waiters (queue limit {self.config.queue_limit})"
            )
        remaining = limit - (time.monotonic() - started)
        if remaining <= 0:
            self._stats.exhausted += 1
            raise PoolExhausted(
                f"timed out after {limit:.1f}s waiting for a connection to account {self.account_id}"
            )
        fut: _Waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        self._stats.waits += 1
        try:
            async with asyncio.timeout(remaining):
                return await fut
        except BaseException as exc:
            self._abandon(fut)
            if isinstance(exc, TimeoutError):
                self._stats.exhausted += 1
                raise PoolExhausted(
                    f"timed out after {limit:.1f}s waiting for a connection to account {self.account_id}"
                ) from None
            raise

    def _abandon(self, fut: _Waiter) -> None:
        """A waiter left (timeout or cancel): whatever it was handed goes to the next one."""
        with contextlib.suppress(ValueError):
            self._waiters.remove(fut)
        if fut.done() and not fut.cancelled():
            handed = fut.result()
            if handed is not None:
                self._return_idle(handed)
            else:
                self._wake_dialer()

    def _next_waiter(self) -> _Waiter | None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                return fut
        return None

    def _wake_dialer(self) -> None:
        if self.size < self.config.max_conns:
            fut = self._next_waiter()
            if fut is not None:
                fut.set_result(None)

    # -- release -----------------------------------------------------------------------
    def _release(self, entry: Entry, *, broken: bool, bound: bool) -> None:
        if broken:
            self._stats.broken += 1
            self._drop(entry)
            return
        if (
            entry.conn.closed
            or self._clock() - entry.created_at >= self.config.max_age_s
            or self._closed
        ):
            self._drop(entry, expired=not entry.conn.closed)
            return
        entry.bound = bound
        entry.last_used = entry.last_checked = self._clock()
        self._return_idle(entry)

    def _return_idle(self, entry: Entry) -> None:
        entry.released = True
        fut = self._next_waiter()
        if fut is not None:
            entry.released = False
            fut.set_result(entry)
            return
        self._idle.push(entry)

    def _drop(self, entry: Entry, *, expired: bool = False) -> None:
        self._idle.remove(entry.conn_id)
        if self._all.pop(entry.conn_id, None) is None:
            return
        if expired:
            self._stats.expired += 1
        self._spawn(entry.conn.aclose())
        self._wake_dialer()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        try:
            task = asyncio.get_running_loop().create_task(coro)
        except RuntimeError:
            coro.close()
            return
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- maintenance (R-15) ----------------------------------------------------------------
    async def maintain_once(self) -> None:
        """Drop dead and aged idle sockets, ping the quiet ones, trim idle above max."""
        cfg = self.config
        now = self._clock()
        for entry in self._idle.entries():
            if entry.conn.closed:
                self._drop(entry)
            elif now - entry.created_at >= cfg.max_age_s:
                self._drop(entry, expired=True)
        due = [
            e
            for e in self._idle.entries()
            if now - max(e.last_used, e.last_checked) >= cfg.ping_interval_s
        ]
        for entry in due:
            if self._idle.remove(entry.conn_id) is None:
                continue  # leased meanwhile
            try:
                await entry.conn.ping(cfg.ping_timeout_s)
            except Exception:
                self._stats.pings_failed += 1
                self._drop(entry)
                continue
            entry.last_checked = self._clock()
            self._return_idle(entry)
        while len(self._idle) > cfg.max_idle:
            surplus = self._idle.pop()
            if surplus is None:
                break
            self._stats.trimmed += 1
            self._drop(surplus)
        self._maybe_prewarm()

    # -- prewarm (R-16) ----------------------------------------------------------------
    def _prewarm_open(self, now: float) -> bool:
        cfg = self.config
        window = self._prewarm_failures
        while window and now - window[0] > cfg.prewarm_failure_window_s:
            window.popleft()
        if now < self._prewarm_blocked_until:
            return False
        if len(window) >= cfg.prewarm_failure_threshold:
            self._prewarm_blocked_until = now + cfg.prewarm_reopen_s
            window.clear()
            return False
        return True

    def _maybe_prewarm(self) -> None:
        cfg = self.config
        if cfg.min_idle <= 0 or self._closed:
            return
        if self._prewarm_task is not None and not self._prewarm_task.done():
            return
        if len(self._idle) + self._dialing >= cfg.min_idle or self.size >= cfg.max_conns:
            return
        now = self._clock()
        if now < self._prewarm_next or not self._prewarm_open(now):
            return
        self._prewarm_next = now + cfg.prewarm_cooldown_s
        try:
            self._prewarm_task = asyncio.get_running_loop().create_task(self._prewarm())
        except RuntimeError:
            return
        self._stats.prewarm_runs += 1

    async def _prewarm(self) -> None:
        cfg = self.config
        while (
            len(self._idle) + self._dialing < cfg.min_idle
            and self.size < cfg.max_conns
            and not self._closed
        ):
            try:
                entry = await self._dial()
            except DialFailed:
                self._prewarm_failures.append(self._clock())
                if not self._prewarm_open(self._clock()):
                    return
                continue
            self._return_idle(entry)

    @property
    def prewarm_running(self) -> bool:
        return self._prewarm_task is not None and not self._prewarm_task.done()

    async def wait_prewarm(self) -> None:
        """Wait for the running prewarm round, if any (tests, shutdown)."""
        task = self._prewarm_task
        if task is not None:
            with contextlib.suppress(BaseException):
                await asyncio.shield(task)

    async def aclose(self) -> None:
        self._closed = True
        if self._prewarm_task is not None:
            self._prewarm_task.cancel()
            with contextlib.suppress(BaseException):
                await self._prewarm_task
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_exception(PoolClosed(f"pool for account {self.account_id} closed"))
        for entry in self._idle.entries():
            self._drop(entry)
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)


class PoolManager:
    """All account pools of a process, plus the one background maintenance task."""

    def __init__(
        self,
        dialer: Dialer,
        config: PoolConfig,
        *,
        clock: Clock = time.monotonic,
        per_account: Mapping[str, PoolConfig] | None = None,
    ) -> None:
        self._dialer = dialer
        self._config = config
        self._clock = clock
        self._per_account = dict(per_account or {})
        self._pools: dict[str, AccountPool] = {}
        self._task: asyncio.Task[None] | None = None
        for account_id in self._per_account:
            self.pool(account_id)

    def pool(self, account_id: str) -> AccountPool:
        found = self._pools.get(account_id)
        if found is None:
            config = self._per_account.get(account_id, self._config)
            found = self._pools[account_id] = AccountPool(
                account_id, self._dialer, config, self._clock
            )
        return found

    def stats(self) -> dict[str, PoolStats]:
        return {account_id: p.stats() for account_id, p in self._pools.items()}

    async def maintain_once(self) -> None:
        for p in list(self._pools.values()):
            try:
                await p.maintain_once()
            except Exception:
                log.exception("pool maintenance failed", extra={"account_id": p.account_id})

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        interval = min(
            [self._config.maintenance_interval_s]
            + [c.maintenance_interval_s for c in self._per_account.values()]
        )
        while True:
            await asyncio.sleep(interval)
            await self.maintain_once()

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
            self._task = None
        for p in self._pools.values():
            await p.aclose()
