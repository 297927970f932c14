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


def first_wait(silence_s: float, read_timeout_s: float) -> float:
    """How long a read waits before the socket is pinged: ``silence_s``, or the whole
    read timeout when pinging is off or would only come after it."""
    return silence_s if 0 < silence_s < read_timeout_s else read_timeout_s


async def recv_live(
    conn: PingableSocket,
    *,
    silence_s: float,
    pong_timeout_s: float,
    read_timeout_s: float,
) -> str | bytes:
    """The next upstream message, pinging the socket whenever it has been silent for
    ``silence_s``. Raises ``UpstreamUnresponsive`` (socket aborted) on a missed pong and
    ``TimeoutError`` once the socket has been silent, but alive, for ``read_timeout_s``.
    A relay loop inlines the first read (``first_wait``) and calls ``after_silence``
    itself: one coroutine less per event."""
    wait = first_wait(silence_s, read_timeout_s)
    try:
        return await conn.recv(timeout=wait)
    except TimeoutError:
        if wait >= read_timeout_s:
            raise
    return await after_silence(
        conn, silence_s=silence_s, pong_timeout_s=pong_timeout_s, read_timeout_s=read_timeout_s
    )


async def after_silence(
    conn: PingableSocket,
    *,
    silence_s: float,
    pong_timeout_s: float,
    read_timeout_s: float,
) -> str | bytes:
    """The rest of a read that has already waited ``silence_s`` in vain: ping, and wait
    on while pongs come back, up to ``read_timeout_s`` of silence in all."""
    loop = asyncio.get_running_loop()
    started = loop.time() - silence_s
    while True:
        try:
            await conn.ping(pong_timeout_s)
        except TimeoutError:
            conn.abort()
            raise UpstreamUnresponsive(loop.time() - started) from None
        remaining = read_timeout_s - (loop.time() - started)
        if remaining <= 0:
            raise TimeoutError(f"upstream silent for {read_timeout_s:.0f}s")
        if silence_s >= remaining:
            return await conn.recv(timeout=remaining)
        try:
            return await conn.recv(timeout=silence_s)
        except TimeoutError:
            pass
