"""Reading an upstream socket mid-turn without trusting silence.

A half-open upstream (the peer stopped sending and reading, no FIN, no RST) looks exactly
like a model that is thinking. The read deadline for a turn is long (a reasoning model
may be silent for minutes), so silence alone cannot fail the turn early. Instead, after
``silence_s`` without a frame the socket is pinged: a live peer answers within
``pong_timeout_s`` and the wait goes on; a half-open one does not, and the socket is
retired at once as a transient transport failure.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from gateway.upstream.ws import UpstreamClosed

CLOSE_NO_PONG = 1006


class PingableSocket(Protocol):
    async def recv(self, timeout: float | None = None) -> str | bytes: ...

    async def ping(self, timeout: float) -> None: ...

    def abort(self) -> None: ...


class UpstreamUnresponsive(UpstreamClosed):
    """The upstream went silent and did not answer a ping: treated as a dropped socket."""

    def __init__(self, silent_s: float) -> None:
        super().__init__(CLOSE_NO_PONG, f"upstream silent for {silent_s:.1f}s and missed a ping")


async def recv_live(
    conn: PingableSocket,
    *,
    silence_s: float,
    pong_timeout_s: float,
    read_timeout_s: float,
) -> str | bytes:
    """The next upstream message, pinging the socket whenever it has been silent for
    ``silence_s``. Raises ``UpstreamUnresponsive`` (socket aborted) on a missed pong and
    ``TimeoutError`` once the socket has been silent, but alive, for ``read_timeout_s``."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while True:
        remaining = read_timeout_s - (loop.time() - started)
        if remaining <= 0:
            raise TimeoutError(f"upstream silent for {read_timeout_s:.0f}s")
        if silence_s <= 0 or silence_s >= remaining:
            return await conn.recv(timeout=remaining)
        try:
            return await conn.recv(timeout=silence_s)
        except TimeoutError:
            pass
        try:
            await conn.ping(pong_timeout_s)
        except TimeoutError:
            conn.abort()
            raise UpstreamUnresponsive(loop.time() - started) from None
