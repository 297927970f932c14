"""Account cooldowns shared between gateway instances through the state store.

When this process finds an account rate-limited it publishes the deadline (wall-clock
epoch seconds, living as long as the cooldown) off the turn's path; a periodic task reads
every account's published deadline (one round trip per group) and cools the account here
too, so no instance sends new conversations to an account another one saw refuse work.
The scheduler runs on the monotonic clock, the store on the wall clock: the conversion
happens here, at both ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from gateway.accounts import Scheduler
from statestore import StateStore

log = logging.getLogger("gateway.accounts")


class CooldownSync:
    def __init__(
        self,
        scheduler: Scheduler,
        store: StateStore,
        *,
        interval_s: float,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.scheduler = scheduler
        self.store = store
        self.interval_s = interval_s
        self._monotonic = monotonic
        self._wall = wall
        self._groups: dict[str, list[str]] = {}
        for account in scheduler.accounts.values():
            self._groups.setdefault(account.group, []).append(account.id)
        self._publishing: set[asyncio.Task[bool]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._closing = False

    # -- this instance saw a refusal ------------------------------------------------------
    def publish(self, account_id: str, until: float) -> None:
        """The scheduler's ``on_rate_limited`` hook: fire and forget, never awaited by a turn."""
        wait_s = until - self._monotonic()
        if wait_s <= 0:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a synchronous caller): nobody to tell
            return
        group = self.scheduler.accounts[account_id].group
        task = loop.create_task(
            self.store.publish_cooldown(group, account_id, self._wall() + wait_s, wait_s)
        )
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)

    async def flush(self) -> None:
        """Wait for the publishes in flight (tests, shutdown)."""
        if self._publishing:
            await asyncio.gather(*self._publishing, return_exceptions=True)

    # -- what the other instances saw ---------------------------------------------------------
    async def sync_once(self) -> list[str]:
        """Read every published deadline and apply it; returns the accounts found cooling."""
        found: list[str] = []
        for group, account_ids in self._groups.items():
            if self._closing:
                break
            deadlines = await self.store.read_cooldowns(group, account_ids)
            now_mono, now_wall = self._monotonic(), self._wall()
            for account_id, until_epoch in deadlines.items():
                if until_epoch > now_wall:
                    self.scheduler.cool_until(account_id, now_mono + (until_epoch - now_wall))
                    found.append(account_id)
        return found

    async def run(self) -> None:
        # The flag as well as the cancel: the Redis client can swallow a cancel that lands
        # inside a call (the call just returns), and the loop must still end.
        while not self._closing:
            await asyncio.sleep(self.interval_s)
            try:
                await self.sync_once()
            except Exception:  # the store never raises by contract; keep syncing regardless
                log.exception("account cooldown sync failed")

    def start(self) -> None:
        if self._loop_task is None:
            self._loop_task = asyncio.get_running_loop().create_task(self.run())

    async def aclose(self) -> None:
        self._closing = True
        task, self._loop_task = self._loop_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.flush()
