"""Per-account upstream connection pool.

A socket is leased (one response in flight) or idle in the account's indexed heap.
Acquire takes the preferred socket by id when it is idle and healthy, else the heap
top; dials when under ``max_conns``; else waits in a bounded FIFO queue. A released
socket goes straight to the oldest waiter; a freed slot is reserved for the oldest
waiter, which then dials. Broken, closed or expired sockets never go back.

Slot accounting: ``size = len(_conns) + _dialing`` never exceeds ``max_conns``.
``_dialing`` counts reserved slots (a dial in progress, or a slot handed to a waiter
that has not run yet).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any

import msgspec

from pool.heap import Entry, IdleHeap
from pool.lease import Lease
from pool.prewarm import PrewarmGate
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
from pool.waiters import DIAL, Waiter, WaiterQueue

_PING_PARALLELISM = 8  # background pings in flight per account


class AccountPool:
    def __init__(
        self,
        account_id: str,
        dialer: Dialer,
        config: PoolConfig,
        clock: Clock,
        *,
        closed: bool = False,
    ) -> None:
        """``closed``: born closed (a manager shut down before this account appeared)."""
        self.account_id = account_id
        self.config = config
        self._dialer = dialer
        self._clock = clock
        self._idle = IdleHeap()
        self._conns: dict[str, Entry] = {}  # every socket the pool owns: idle, leased, probing
        self._dialing = 0
        self._leased = 0
        self._waiters = WaiterQueue()
        self._closed = closed
        self._background: set[asyncio.Task[None]] = set()
        self._prewarm_task: asyncio.Task[None] | None = None
        self._prewarm_gate = PrewarmGate(config, clock)
        # The counters live here; stats() fills in the gauges on a copy.
        self._counts = PoolStats()
        self._give_back = self._release  # bound once: a lease is made per acquire

    # -- inspection --------------------------------------------------------------------
    @property
    def size(self) -> int:
        """Sockets owned plus slots reserved for dials."""
        return len(self._conns) + self._dialing

    @property
    def closed(self) -> bool:
        return self._closed

    def has_idle(self, conn_id: str) -> bool:
        return conn_id in self._idle

    def has_conn(self, conn_id: str) -> bool:
        return conn_id in self._conns

    def idle_conns(self) -> list[Conn]:
        return [entry.conn for entry in self._idle]

    @property
    def prewarm_running(self) -> bool:
        return self._prewarm_task is not None

    def stats(self) -> PoolStats:
        counts = self._counts
        return msgspec.structs.replace(
            counts,
            size=len(self._conns),
            idle=len(self._idle),
            leased=self._leased,
            dialing=self._dialing,
            waiters=len(self._waiters),
            reuse_ratio=counts.reuses / counts.acquires if counts.acquires else 0.0,
            prewarm_gate_trips=self._prewarm_gate.trips,
        )

    # -- acquire -----------------------------------------------------------------------
    async def acquire(
        self, *, preferred_conn_id: str | None = None, timeout: float | None = None
    ) -> Lease:
        """Lease a socket. ``timeout`` bounds the time queued (default acquire_timeout_s);
        dial time is bounded by the dialer."""
        if self._closed:
            raise PoolClosed(f"pool for account {self.account_id} is closed")
        ready = self.acquire_ready(preferred_conn_id=preferred_conn_id)
        if ready is not None:
            return ready
        try:
            if preferred_conn_id is not None:
                entry = self._idle.remove(preferred_conn_id)
                if entry is not None and await self._vet(entry):  # not leasable as is
                    self._counts.preferred_hits += 1
                    return self._lease(entry, True, True, 0.0)
            while (entry := self._idle.pop()) is not None:
                if self._ready(entry) or await self._vet(entry):
                    return self._lease(entry, True, False, 0.0)
            if self.size < self.config.max_conns and not self._waiters:
                self._dialing += 1
                return self._lease(await self._dial_reserved(), False, False, 0.0)
            return await self._wait(preferred_conn_id, timeout)
        finally:
            if self.config.min_idle > len(self._idle):
                self._maybe_prewarm()

    def acquire_ready(self, *, preferred_conn_id: str | None = None) -> Lease | None:
        """A lease at once, without a coroutine, when an idle socket is leasable as is
        (the preferred one, else the cheapest); None: ``acquire`` must vet, dial or wait."""
        if self._closed:
            return None
        idle = self._idle
        preferred = idle.get(preferred_conn_id) if preferred_conn_id is not None else None
        entry = preferred or idle.peek()
        if entry is None or not self._ready(entry):
            return None
        idle.remove(entry.conn_id)
        self._counts.preferred_hits += preferred is not None
        lease = self._lease(entry, True, preferred is not None, 0.0)
        if self.config.min_idle > len(idle):
            self._maybe_prewarm()
        return lease

    def _lease(self, entry: Entry, reused: bool, preferred_hit: bool, waited_s: float) -> Lease:
        self._counts.acquires += 1
        self._leased += 1
        if reused:
            self._counts.reuses += 1
        return Lease(self._give_back, self.account_id, entry, reused, preferred_hit, waited_s)

    def _ready(self, entry: Entry) -> bool:
        """Leasable as is: open, young, and known alive recently (no ping needed)."""
        now = self._clock()
        cfg = self.config
        return (
            not entry.conn.closed
            and now - entry.created_at < cfg.max_age_s
            and now - entry.last_checked < cfg.ping_before_lease_idle_s
        )

    async def _vet(self, entry: Entry, keep_slot: bool = False) -> bool:
        """Health gate for an owned entry outside the heap. False: it was dropped (and
        with ``keep_slot`` its slot is reserved for the caller to dial into)."""
        now = self._clock()
        cfg = self.config
        if entry.conn.closed:
            self._drop(entry, keep_slot)
            return False
        if now - entry.created_at >= cfg.max_age_s:
            self._counts.expired += 1
            self._drop(entry, keep_slot)
            return False
        if now - entry.last_checked >= cfg.ping_before_lease_idle_s:
            return await self._probe(entry, keep_slot)  # the half-open socket check
        return True

    async def _probe(self, entry: Entry, keep_slot: bool = False) -> bool:
        """Ping an entry held outside the heap. False: it failed and was dropped.
        Cancelled: it goes back untouched, so the next taker pings it again."""
        timeout = self.config.ping_timeout_s
        try:
            async with asyncio.timeout(timeout):
                await entry.conn.ping(timeout)
        except asyncio.CancelledError:
            self._return_idle(entry)
            raise
        except Exception:
            self._counts.pings_failed += 1
            self._drop(entry, keep_slot)
            return False
        if entry.conn.closed:
            self._drop(entry, keep_slot)
            return False
        entry.last_checked = self._clock()
        return True

    async def _dial_reserved(self) -> Entry:
        """Dial into a slot the caller already reserved (``_dialing += 1``)."""
        if self._closed:
            self._dialing -= 1
            raise PoolClosed(f"pool for account {self.account_id} is closed")
        self._counts.dials += 1
        try:
            conn = await self._dialer.dial(self.account_id)
        except BaseException as exc:
            self._dialing -= 1
            if isinstance(exc, Exception):
                self._counts.dial_failures += 1
                self._prewarm_gate.dial_failed()
            self._wake_waiters()  # the reserved slot is free again
            if isinstance(exc, Exception):
                raise DialFailed(
                    self.account_id, f"dial to account {self.account_id} failed: {exc!r}"
                ) from exc
            raise
        self._dialing -= 1
        self._prewarm_gate.dial_succeeded()
        conn_id = conn.conn_id
        if self._closed or conn_id in self._conns:
            self._spawn(conn.aclose())
            self._wake_waiters()
            if self._closed:
                raise PoolClosed(f"pool for account {self.account_id} closed during a dial")
            raise PoolError(f"dialer returned a duplicate conn_id {conn_id!r}")
        now = self._clock()
        entry = Entry(conn, conn_id, now, now, now)
        self._conns[conn_id] = entry
        return entry

    async def _wait(self, preferred_conn_id: str | None, timeout: float | None) -> Lease:
        cfg = self.config
        if len(self._waiters) >= cfg.queue_limit:
            self._counts.exhausted += 1
            raise PoolExhausted(
                f"pool exhausted for account {self.account_id}: "
                f"{self._leased}/{cfg.max_conns} connections leased and "
                f"{len(self._waiters)} waiters (queue limit {cfg.queue_limit})"
            )
        limit = cfg.acquire_timeout_s if timeout is None else timeout
        loop = asyncio.get_running_loop()
        started = loop.time()
        fut = self._waiters.join()
        self._counts.waits += 1
        try:
            async with asyncio.timeout_at(started + limit):
                handed = await fut
        except BaseException as exc:
            self._abandon(fut)
            if isinstance(exc, TimeoutError):
                self._counts.exhausted += 1
                raise PoolExhausted(
                    f"timed out after {limit:g}s waiting for a connection to account "
                    f"{self.account_id} ({self._leased}/{cfg.max_conns} leased, "
                    f"{len(self._waiters)} waiters)"
                ) from None
            raise
        waited = loop.time() - started
        if isinstance(handed, Entry):
            if await self._vet(handed, keep_slot=True):
                return self._lease(handed, True, handed.conn_id == preferred_conn_id, waited)
            # It was unusable and dropped; its slot stayed reserved for this waiter.
        return self._lease(await self._dial_reserved(), False, False, waited)

    def _abandon(self, fut: Waiter) -> None:
        """A waiter left (timeout or cancel) and leaves no trace: whatever it was handed
        at that moment goes to the next waiter or back to the heap."""
        self._waiters.leave(fut)
        if fut.done() and not fut.cancelled():
            handed = fut.result()
            if isinstance(handed, Entry):
                self._return_idle(handed)
                return
            self._dialing -= 1
        # Also when it was never served: while it sat cancelled in the queue, a newcomer
        # may have queued behind it although a slot was free.
        self._wake_waiters()

    def _wake_waiters(self) -> None:
        """Reserve each free slot for the oldest waiter; it dials when it runs."""
        while not self._closed and self.size < self.config.max_conns:
            fut = self._waiters.next()
            if fut is None:
                return
            self._dialing += 1
            fut.set_result(DIAL)

    # -- release -----------------------------------------------------------------------
    def _release(self, entry: Entry, broken: bool, bound: bool) -> None:
        self._leased -= 1
        if broken:
            self._counts.broken += 1
            self._drop(entry)
            return
        now = self._clock()
        if entry.conn.closed:
            self._drop(entry)
            return
        if now - entry.created_at >= self.config.max_age_s:
            self._counts.expired += 1
            self._drop(entry)
            return
        entry.bound = bound
        entry.last_used = entry.last_checked = now
        self._return_idle(entry)

    def _return_idle(self, entry: Entry) -> None:
        """An owned socket outside the heap goes to the oldest waiter, else the heap."""
        if self._closed:
            self._drop(entry)
            return
        fut = self._waiters.next() if self._waiters else None
        if fut is None:
            self._idle.push(entry)
        else:
            fut.set_result(entry)

    def _drop(self, entry: Entry, keep_slot: bool = False) -> None:
        """Forget a socket and close it in the background. Its slot goes to the oldest
        waiter, or with ``keep_slot`` stays reserved for the caller to dial into."""
        self._idle.remove(entry.conn_id)
        if self._conns.pop(entry.conn_id, None) is None:
            return
        self._spawn(entry.conn.aclose())
        if keep_slot:
            self._dialing += 1
        else:
            self._wake_waiters()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None] | None:
        """Run a background coroutine owned by this pool (awaited or cancelled on aclose)."""
        try:
            task = asyncio.get_running_loop().create_task(coro)
        except RuntimeError:  # no running loop (release from a finalizer): nothing to run on
            coro.close()
            return None
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    # -- maintenance -------------------------------------------------------------------
    async def maintain_once(self) -> None:
        """One round of background health work: drop closed and aged idle sockets, ping
        the quiet ones, trim idle above max_idle, top up to min_idle."""
        if self._closed:
            return
        cfg = self.config
        now = self._clock()
        due: list[Entry] = []
        for entry in self._idle:
            if entry.conn.closed:
                self._drop(entry)
            elif now - entry.created_at >= cfg.max_age_s:
                self._counts.expired += 1
                self._drop(entry)
            elif now - entry.last_checked >= cfg.ping_interval_s:
                due.append(entry)
        if due:
            gate = asyncio.Semaphore(_PING_PARALLELISM)
            await asyncio.gather(*(self._background_ping(entry, gate) for entry in due))
        # Heap order is the trim order: least recently used first, unbound before bound.
        while len(self._idle) > cfg.max_idle:
            surplus = self._idle.pop()
            assert surplus is not None
            self._counts.trimmed += 1
            self._drop(surplus)
        self._maybe_prewarm()

    async def _background_ping(self, entry: Entry, gate: asyncio.Semaphore) -> None:
        async with gate:
            # Leased, dropped or used since the sweep looked: nothing to do.
            if self._clock() - entry.last_checked < self.config.ping_interval_s:
                return
            if self._idle.remove(entry.conn_id) is None:
                return
            if await self._probe(entry):
                self._return_idle(entry)

    # -- prewarm -----------------------------------------------------------------------
    def prewarm_gate_open(self) -> bool:
        """False while recent dial failures keep prewarm from dialing."""
        return self._prewarm_gate.is_open()

    def _maybe_prewarm(self) -> None:
        cfg = self.config
        if (
            len(self._idle) >= cfg.min_idle
            or self._prewarm_task is not None
            or self._closed
            or self._waiters
            or self.size >= cfg.max_conns
        ):
            return
        if not self._prewarm_gate.may_start():
            return
        self._prewarm_gate.round_started()
        task = self._spawn(self._prewarm())
        if task is not None:
            self._counts.prewarm_runs += 1
            self._prewarm_task = task

    async def _prewarm(self) -> None:
        """One round: dial one at a time up to min_idle, at most min_idle dials."""
        cfg = self.config
        try:
            for _ in range(cfg.min_idle):
                if (
                    len(self._idle) >= cfg.min_idle
                    or self.size >= cfg.max_conns
                    or self._closed
                    or not self._prewarm_gate.is_open()
                ):
                    break
                self._dialing += 1
                try:
                    entry = await self._dial_reserved()
                except PoolError:
                    continue  # recorded by the failure gate, checked at the loop top
                self._return_idle(entry)
        finally:
            self._prewarm_task = None
            self._prewarm_gate.round_finished()

    async def wait_prewarm(self) -> None:
        """Wait for the running prewarm round, if any (tests, shutdown)."""
        task = self._prewarm_task
        if task is not None:
            with contextlib.suppress(BaseException):
                await asyncio.shield(task)

    # -- shutdown ----------------------------------------------------------------------
    async def aclose(self) -> None:
        """Stop prewarm, fail waiters, close idle sockets; leased ones close on release."""
        if self._closed:
            return
        self._closed = True
        if self._prewarm_task is not None:
            self._prewarm_task.cancel()
        while (fut := self._waiters.next()) is not None:
            fut.set_exception(PoolClosed(f"pool for account {self.account_id} closed"))
        for entry in self._idle:
            self._drop(entry)
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)
