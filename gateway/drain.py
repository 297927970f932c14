"""Draining shutdown on SIGTERM/SIGINT, whichever way uvicorn was started.

uvicorn installs its own handler for SIGTERM and SIGINT before it runs the app's
lifespan; on the first signal it closes every WebSocket with 1012 at once, cutting the
turns in flight. The app's lifespan wraps that handler: the first signal starts the
gateway's drain (readiness fails, new sockets and turns are refused, turns in flight run
to their terminal event up to the drain timeout, idle clients are closed), and only then
is the server's own handler called so uvicorn shuts down as usual. A second signal goes
straight to the server's handler: an operator who insists gets an immediate exit.

Because it lives in the app, it works under ``python -m gateway``, the console script,
``uvicorn gateway.app:create_app --factory`` and uvicorn's ``--workers`` alike.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import Any

log = logging.getLogger("gateway.drain")

DRAIN_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_Handler = Callable[[int, FrameType | None], Any]


class SignalDrain:
    """Runs ``drain()`` before the server's own shutdown handler on the first signal."""

    def __init__(self, drain: Callable[[], Awaitable[None]]) -> None:
        self._drain = drain
        self._originals: dict[int, _Handler] = {}
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def installed(self) -> bool:
        return bool(self._originals)

    @property
    def draining(self) -> bool:
        return self._task is not None

    def install(self) -> bool:
        """Wrap the current handlers. Returns False (and does nothing) where there is no
        server handler to wrap: not the main thread, or default/ignored handlers."""
        if threading.current_thread() is not threading.main_thread():
            return False
        current = {sig: signal.getsignal(sig) for sig in DRAIN_SIGNALS}
        if not all(callable(handler) for handler in current.values()):
            return False
        self._loop = asyncio.get_running_loop()
        for sig, handler in current.items():
            self._originals[sig] = handler  # type: ignore[assignment]
            signal.signal(sig, self._handle)
        return True

    def uninstall(self) -> None:
        for sig, handler in self._originals.items():
            if signal.getsignal(sig) == self._handle:
                signal.signal(sig, handler)
        self._originals.clear()

    def _handle(self, sig: int, frame: FrameType | None) -> None:
        loop = self._loop
        if self._task is not None or loop is None or loop.is_closed():
            self._forward(sig, frame)
            return
        loop.call_soon_threadsafe(self._start, sig)

    def _start(self, sig: int) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(sig))

    async def _run(self, sig: int) -> None:
        try:
            await self._drain()
        except Exception:
            log.exception("drain failed; shutting down now", extra={"event": "drain_failed"})
        finally:
            self._shut_down(sig)

    def _shut_down(self, sig: int) -> None:
        """After a drain, ask the server to exit. A uvicorn server is told directly, so the
        process exits 0 (the shutdown was the orderly one it was asked for) instead of
        re-raising the signal once it is done; any other handler is simply called."""
        handler = self._originals.get(sig)
        server = getattr(handler, "__self__", None)
        if server is not None and hasattr(server, "should_exit"):
            server.should_exit = True
            return
        self._forward(sig, None)

    def _forward(self, sig: int, frame: FrameType | None) -> None:
        handler = self._originals.get(sig)
        if handler is not None:
            handler(sig, frame)
