"""All account pools of a process, plus the one background maintenance task."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping

from pool.pool import AccountPool
from pool.types import Clock, Dialer, PoolConfig, PoolStats

log = logging.getLogger("pool")


class PoolManager:
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
        self._closed = False
        for account_id in self._per_account:
            self.pool(account_id)

    def pool(self, account_id: str) -> AccountPool:
        """The account's pool, created on first use (closed at once after aclose)."""
        found = self._pools.get(account_id)
        if found is None:
            config = self._per_account.get(account_id, self._config)
            found = AccountPool(account_id, self._dialer, config, self._clock, closed=self._closed)
            self._pools[account_id] = found
        return found

    def stats(self) -> dict[str, PoolStats]:
        return {account_id: p.stats() for account_id, p in self._pools.items()}

    async def maintain_once(self) -> None:
        """One maintenance round over every account, idle ones included."""
        pools = list(self._pools.values())
        results = await asyncio.gather(*(p.maintain_once() for p in pools), return_exceptions=True)
        for p, result in zip(pools, results, strict=True):
            if isinstance(result, asyncio.CancelledError):
                raise result
            if isinstance(result, BaseException):
                log.error(
                    "pool maintenance failed for account %s",
                    p.account_id,
                    exc_info=result,
                    extra={"account_id": p.account_id},
                )

    def start(self) -> None:
        """Start the background maintenance task (idempotent; needs a running loop)."""
        if self._task is None and not self._closed:
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
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for p in list(self._pools.values()):
            await p.aclose()
