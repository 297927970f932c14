"""A client socket's turn bindings, written to the shared store off the turn's path.

A turn is over for the client when its terminal event has been sent; the client may
send its next ``response.create`` at once. Writing the binding (response → account,
pending calls, the session's last response) can take up to the store's op deadline, so
it must not hold the turn, its upstream socket, or the next turn. Bindings of one
socket are written one at a time in the order their turns ended, so an older binding
never lands after a newer one.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from opentelemetry import context as otel_context

from gateway.tracing import Tracing
from statestore import StateStore, TurnBinding

log = logging.getLogger("gateway.binder")


@dataclass(frozen=True, slots=True)
class Retry:
    """A bounded retry: ``attempts`` tries, ``backoff_s`` before the second (doubled after
    each), all within ``budget_s``. No try starts (and no backoff is waited) past the budget
    on ``clock``; whatever runs over it on the loop's clock is cut off."""

    attempts: int
    backoff_s: float
    budget_s: float
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class BindWriter:
    """Serial, ordered writer of one socket's bindings."""

    def __init__(
        self,
        store: StateStore,
        *,
        tracing: Tracing | None = None,
        on_busy: Callable[[], None] | None = None,
        on_idle: Callable[[], None] | None = None,
        on_failed: Callable[[TurnBinding], None] | None = None,
    ) -> None:
        self._store = store
        # Each binding keeps the trace context of its turn: its span is that turn's child
        # (with tracing off there is neither span nor context to keep).
        self._tracing = tracing if tracing is not None and tracing.enabled else None
        self._queue: collections.deque[tuple[TurnBinding, otel_context.Context | None]] = (
            collections.deque()
        )
        self._task: asyncio.Task[None] | None = None
        self._on_busy = on_busy
        self._on_idle = on_idle
        self._on_failed = on_failed
        self.last: TurnBinding | None = None  # the newest binding submitted

    @property
    def pending(self) -> int:
        return len(self._queue) + (1 if self._task is not None else 0)

    def submit(self, binding: TurnBinding) -> None:
        """Queue a binding; returns at once. A store that binds without I/O (in-process)
        is written right here when nothing is queued: no task, no loop iteration."""
        self.last = binding
        if self._task is None and self._tracing is None:
            outcome = self._store.bind_turn_nowait(binding)
            if outcome is not None:
                if not outcome.ok and self._on_failed is not None:
                    self._on_failed(binding)
                return
        context = otel_context.get_current() if self._tracing is not None else None
        self._queue.append((binding, context))
        if self._task is None:
            if self._on_busy is not None:
                self._on_busy()
            self._task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        try:
            while self._queue:
                binding, trace_context = self._queue.popleft()
                token = None if trace_context is None else otel_context.attach(trace_context)
                try:
                    if self._tracing is None:
                        outcome = await self._store.bind_turn(binding)
                    else:
                        with self._tracing.child("statestore.bind"):
                            outcome = await self._store.bind_turn(binding)
                    if not outcome.ok and self._on_failed is not None:
                        self._on_failed(binding)
                except Exception:
                    # The store reports its own failures (and keeps the record for
                    # write-back); anything escaping it is our bug, not the client's.
                    log.exception(
                        "binding write failed",
                        extra={"event": "bind_failed", "response_id": binding.response_id},
                    )
                finally:
                    if token is not None:
                        otel_context.detach(token)
        finally:
            self._task = None
            if self._on_idle is not None:
                self._on_idle()

    async def flush(self) -> None:
        """Wait until every queued binding has been written (or has failed)."""
        while self._task is not None:
            await asyncio.shield(self._task)

    async def write_again(
        self,
        binding: TurnBinding,
        current: Callable[[], Awaitable[bool | None]],
        retry: Retry,
    ) -> tuple[bool, str | None]:
        """Write one binding once more (after ``flush``), retrying within ``retry``. Each
        try first asks ``current()``: False when someone else has moved on since (then
        nothing is written), None when the store cannot tell (the try is spent). Returns
        (written, the last error when not written and not superseded). Counts as work in
        flight, so a drain waits for it."""
        error = "no time left to write"
        started = retry.clock()
        if self._on_busy is not None:
            self._on_busy()
        try:
            async with asyncio.timeout(retry.budget_s):
                for attempt in range(retry.attempts):
                    if attempt:
                        delay = retry.backoff_s * 2 ** (attempt - 1)
                        if retry.clock() - started + delay >= retry.budget_s:
                            break
                        await retry.sleep(delay)
                    still = await current()
                    if still is False:
                        return False, None
                    if still is None:
                        error = "the store did not answer"
                        continue
                    try:
                        outcome = await self._store.bind_turn(binding)
                    except Exception as exc:  # the store reports its own; see _drain
                        error = _describe(exc)
                        continue
                    if outcome.ok:
                        return True, None
                    error = outcome.error or "not written"
        except TimeoutError:
            error = f"{error}; out of time"
        finally:
            if self._on_idle is not None:
                self._on_idle()
        return False, error
