"""One established upstream WebSocket on picows (a Cython WebSocket client for asyncio).

There is one read path: picows parses frames as bytes arrive and calls ``on_ws_frame``,
which queues complete messages, answers nothing itself (picows answers pings) and
resolves whoever waits: a ``recv()`` caller, a ``ping()`` caller, or nobody while the
socket sits idle in the pool. So a close or a TCP drop is noticed at once even when no
one reads, a pong is seen whichever task is reading, and no reader task is started or
stopped around a lease. One reader and any number of writers and pingers may run at once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from typing import Any

from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport

from gateway.upstream.errors import (
    CLOSE_ABNORMAL,
    CLOSE_NORMAL,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_TOO_BIG,
    MessageTooBig,
    UpstreamClosed,
    UpstreamError,
    UpstreamProtocolError,
)
from gateway.upstream.watchdog import ReadWatchdog

CLOSE_NO_STATUS = 1005
CLOSE_UNSUPPORTED = 1003
CLOSE_INVALID_TEXT = 1007
# Queued-but-unread bytes above which the socket stops reading until the reader catches up.
PAUSE_ABOVE = 4 * 1024 * 1024
RESUME_BELOW = 1024 * 1024
_TEXT, _BINARY, _CONT = WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CONTINUATION
_PONG, _CLOSE = WSMsgType.PONG, WSMsgType.CLOSE


def _code(raw: Any) -> int:
    return int(getattr(raw, "value", raw))


def _is_utf8(payload: bytes) -> bool:
    if payload.isascii():  # most JSON events: checked without building a str
        return True
    try:
        payload.decode()
    except UnicodeDecodeError:
        return False
    return True


def _text_message(payload: bytes) -> str | bytes | None:
    """A text message as delivered: ASCII as str (cheapest to peek at, and its length is
    its size), other UTF-8 as the bytes themselves (decoding and re-encoding them for the
    client would cost more than the check), None when it is not UTF-8."""
    if payload.isascii():
        return payload.decode("ascii")
    return payload if _is_utf8(payload) else None


def byte_size(message: str | bytes) -> int:
    """A text message's size in UTF-8 bytes."""
    if isinstance(message, bytes) or message.isascii():  # str.isascii() does not scan
        return len(message)
    return len(message.encode())


def _close_code(code: int) -> WSCloseCode:
    try:
        return WSCloseCode(code)
    except ValueError:  # a code picows has no name for: say "normal" rather than fail
        return WSCloseCode.OK


class UpstreamWS(WSListener):
    """One established upstream WebSocket (also the picows listener for its frames)."""

    def __init__(self, *, conn_id: str, max_message_bytes: int) -> None:
        super().__init__()
        self.conn_id = conn_id
        self.response_headers: dict[str, str] = {}
        self._max = max_message_bytes
        self._loop = asyncio.get_running_loop()
        self._transport: WSTransport | None = None
        self._pending: collections.deque[str | bytes] = collections.deque()
        self._buffered = 0
        self._reading_paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._watchdog = ReadWatchdog(self._loop)
        self._pong_waiters: list[asyncio.Future[None]] = []
        self._write_resumed: asyncio.Future[None] | None = None
        self._partial: list[bytes] = []
        self._partial_text = False
        self._partial_size = 0
        self._close: UpstreamClosed | None = None
        self._failure: UpstreamError | None = None  # raised by recv instead of the close
        self._idle = False

    # -- state ---------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._close is not None

    @property
    def close_info(self) -> UpstreamClosed | None:
        return self._close

    @property
    def reading(self) -> bool:
        """A recv() is waiting for the next message."""
        return self._waiter is not None

    # -- picows callbacks (the only read path) ------------------------------------------
    def on_ws_connected(self, transport: WSTransport) -> None:
        self._transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if self._close is not None:
            return  # after a close (ours or theirs) the rest of the read buffer is discarded
        kind = frame.msg_type
        if kind is _TEXT or kind is _BINARY:
            if self._partial_size or self._partial:
                self._fail(UpstreamProtocolError("new message inside a fragmented one"), 1002)
                return
            size = frame.payload_size
            if size > self._max:
                self._too_big()
                return
            if not frame.fin:
                self._partial.append(frame.get_payload_as_bytes())
                self._partial_text = kind is _TEXT
                self._partial_size = size
                return
            if kind is _BINARY:
                payload = frame.get_payload_as_bytes()
                if _is_utf8(payload):
                    self._deliver(payload, size)
                else:
                    self._not_utf8(text=False)
                return
            try:
                text = frame.get_payload_as_ascii_text()
            except UnicodeDecodeError:  # not ASCII: keep the bytes if they are UTF-8
                message = _text_message(frame.get_payload_as_bytes())
                if message is None:
                    self._not_utf8(text=True)
                else:
                    self._deliver(message, size)
                return
            self._deliver(text, size)
        elif kind is _CONT:
            self._partial_size += frame.payload_size
            if self._partial_size > self._max:
                self._too_big()
                return
            self._partial.append(frame.get_payload_as_bytes())
            if frame.fin:
                self._deliver_fragmented()
        elif kind is _PONG:
            self._wake_pingers(None)
        elif kind is _CLOSE:
            code = _code(frame.get_close_code()) or CLOSE_NO_STATUS  # picows: 0 = no code
            reason = (frame.get_close_message() or b"").decode(errors="replace")
            with contextlib.suppress(Exception):
                transport.send_close(frame.get_close_code(), frame.get_close_message())
            self._mark_closed(code, reason)
            transport.disconnect()

    def _deliver_fragmented(self) -> None:
        joined = b"".join(self._partial)
        size = self._partial_size
        self._partial.clear()
        self._partial_size = 0
        if self._partial_text:
            message = _text_message(joined)
        else:
            message = joined if _is_utf8(joined) else None
        if message is None:
            self._not_utf8(self._partial_text)
        else:
            self._deliver(message, size)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if self._close is None:
            sent = transport.close_handshake.sent if transport.close_handshake else None
            if sent is not None and _code(sent.code) == CLOSE_TOO_BIG:
                self._failure = MessageTooBig(f"upstream message over {self._max} bytes")
                self._mark_closed(CLOSE_TOO_BIG, "message too big")
            elif sent is not None:
                # picows closed it after a protocol violation by the upstream
                self._failure = UpstreamProtocolError(sent.reason or "protocol error")
                self._mark_closed(_code(sent.code), sent.reason)
            else:
                idle = " while idle" if self._idle else ""
                self._mark_closed(CLOSE_ABNORMAL, f"connection lost{idle}")
        self._wake_writer()

    def pause_writing(self) -> None:
        if self._write_resumed is None:
            self._write_resumed = self._loop.create_future()

    def resume_writing(self) -> None:
        self._wake_writer()

    # -- delivery --------------------------------------------------------------------------
    def _deliver(self, message: str | bytes, size: int) -> None:
        if self._idle:
            # An idle socket must not receive events; its state is unknown now.
            self._fail(UpstreamClosed(CLOSE_PROTOCOL_ERROR, "unexpected message while idle"), 1002)
            return
        self._pending.append(message)
        self._buffered += size
        if self._buffered > PAUSE_ABOVE and not self._reading_paused and self._transport:
            self._reading_paused = True
            self._transport.underlying_transport.pause_reading()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _not_utf8(self, text: bool) -> None:
        # Never relayed: every message reaches the client as a text frame, which must be
        # UTF-8. Invalid text breaks the protocol (1007); such binary data is unsupported.
        kind, code = ("text", CLOSE_INVALID_TEXT) if text else ("binary", CLOSE_UNSUPPORTED)
        self._fail(UpstreamProtocolError(f"{kind} message is not valid UTF-8"), code)

    def _too_big(self) -> None:
        self._fail(MessageTooBig(f"upstream message over {self._max} bytes"), CLOSE_TOO_BIG)

    def _fail(self, failure: UpstreamError, code: int) -> None:
        """Close with ``code`` and make every later recv raise ``failure``."""
        self._failure = failure
        self._partial.clear()
        self._partial_size = 0
        self._pending.clear()
        reason = "message too big" if code == CLOSE_TOO_BIG else str(failure)
        transport = self._transport
        if transport is not None:
            with contextlib.suppress(Exception):
                transport.send_close(_close_code(code), reason.encode()[:120])
            transport.disconnect()
        self._mark_closed(code, reason)

    def _mark_closed(self, code: int, reason: str = "") -> None:
        if self._close is None:
            self._close = UpstreamClosed(code, reason)
        self._watchdog.close()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        self._wake_pingers(self._close)

    def _wake_pingers(self, error: UpstreamClosed | None) -> None:
        waiters, self._pong_waiters = self._pong_waiters, []
        for fut in waiters:
            if fut.done():
                continue
            if error is None:
                fut.set_result(None)
            else:
                fut.set_exception(error)

    def _wake_writer(self) -> None:
        fut, self._write_resumed = self._write_resumed, None
        if fut is not None and not fut.done():
            fut.set_result(None)

    # -- the lessee's side -------------------------------------------------------------------
    async def recv(self, timeout: float | None = None) -> str | bytes:
        """Next complete message: str for an ASCII text message, bytes for any other (valid
        UTF-8: a message that is not fails the socket). Raises UpstreamClosed at the end,
        MessageTooBig or UpstreamProtocolError for what ended it, TimeoutError when
        ``timeout`` passes first (the socket stays usable)."""
        pending = self._pending
        while not pending:
            if self._close is not None:
                raise self._failure or self._close
            waiter: asyncio.Future[None] = self._loop.create_future()
            self._waiter = waiter
            if timeout is not None:
                self._watchdog.watch(waiter, timeout)
            try:
                await waiter
            finally:
                self._waiter = None
        return self._take()

    def recv_nowait(self) -> str | bytes | None:
        """The next complete message if one is already queued, else None (then ``recv``
        waits for it): a relay loop reads a burst without a coroutine per message."""
        return self._take() if self._pending else None

    def _take(self) -> str | bytes:
        message = self._pending.popleft()
        self._buffered -= byte_size(message)  # the unit ``_deliver`` added: bytes
        if self._reading_paused and self._buffered < RESUME_BELOW and self._transport:
            self._reading_paused = False
            self._transport.underlying_transport.resume_reading()
        return message

    def push_back(self, message: str | bytes) -> None:
        """Return a message to the front of the queue (the next recv gets it first)."""
        self._pending.appendleft(message)
        self._buffered += byte_size(message)

    async def send_text(self, data: str | bytes, timeout: float | None = None) -> None:
        """Send one text frame; waits (up to ``timeout``) only while the socket's write
        buffer is over its high-water mark. Cancelling the caller abandons the wait."""
        transport = self._transport
        if self._close is not None or transport is None:
            raise self._close or UpstreamClosed(CLOSE_ABNORMAL, "not connected")
        if transport.is_disconnected:
            self._mark_closed(CLOSE_ABNORMAL, "transport closed")
            raise self._close or UpstreamClosed(CLOSE_ABNORMAL)
        transport.send(_TEXT, data)
        resumed = self._write_resumed
        if resumed is not None:
            async with asyncio.timeout(timeout):
                await asyncio.shield(resumed)
            if self._close is not None:
                raise self._close

    async def ping(self, timeout: float) -> None:
        """Send a ping and wait for its pong, at most ``timeout`` seconds.

        Usable at any time, also in the middle of a turn while another task is blocked
        in ``recv()``: the pong is taken off the wire by the same callback that queues
        messages, so nobody has to be reading. Raises TimeoutError when no pong came in
        time (a half-open socket: the caller should ``abort()`` it), UpstreamClosed when
        the socket is or becomes closed.
        """
        transport = self._transport
        if self._close is not None or transport is None:
            raise self._close or UpstreamClosed(CLOSE_ABNORMAL, "not connected")
        fut: asyncio.Future[None] = self._loop.create_future()
        self._pong_waiters.append(fut)
        transport.send_ping(b"gw")
        try:
            async with asyncio.timeout(timeout):
                await fut
        finally:
            if not fut.done():
                fut.cancel()
            with contextlib.suppress(ValueError):
                self._pong_waiters.remove(fut)

    # -- pooled idleness -----------------------------------------------------------------------
    def watch_idle(self) -> None:
        """The socket goes back to the pool: from now on any message arriving unasked
        retires it (its state is unknown). Closes and drops are noticed regardless."""
        if self._close is None:
            self._idle = True

    def stop_watch(self) -> None:
        """A lessee takes the socket: messages are queued for it again."""
        self._idle = False

    # -- closing ---------------------------------------------------------------------------------
    async def aclose(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        transport = self._transport
        if self._close is None and transport is not None:
            with contextlib.suppress(Exception):
                transport.send_close(_close_code(code), reason.encode()[:120])
        self._mark_closed(code, reason or "closed by gateway")
        if transport is not None:
            transport.disconnect()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await transport.wait_disconnected()

    def abort(self) -> None:
        self._mark_closed(CLOSE_ABNORMAL, "aborted by gateway")
        if self._transport is not None:
            self._transport.disconnect(graceful=False)
