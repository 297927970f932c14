"""Handshake limits for hostile and idle clients.

A connection is *pending* from TCP accept until its handshake is answered (WebSocket
accept or denial) or, for plain HTTP, until its request headers are complete. Pending
connections are capped per process, each must finish within a deadline, and a header
section over a byte budget is answered 431 and closed.

Two layers share one ``HandshakeGate``:

* ``install_ingress_guard`` adds the limits to uvicorn's httptools protocol, the only
  layer that sees a request whose headers are still arriving (slowloris), and fixes
  two defects of uvicorn's websockets-sansio protocol: a rejected request line or
  header (431/414) is queued but never written nor closed, and a completed denial
  response leaves the handshake marked incomplete (an ERROR log line per refusal).
  It also makes that protocol offer the app a direct text-frame writer (gateway.ingress).
  It is applied by the app factory, so it works under ``python -m gateway`` and the
  plain ``uvicorn ... --factory`` command alike.
* ``HandshakeGuard`` is ASGI middleware that carries the same deadline through the
  app's own handshake work (authentication, state lookups) and answers a late or
  over-cap handshake with a proper denial response. It also works alone.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.events import error_json
from gateway.ingress import offer_text_frames

log = logging.getLogger("gateway.guard")

_HANDSHAKE_END = frozenset({"websocket.accept", "websocket.close", "websocket.http.response.start"})


class LogLimiter:
    """Lets at most ``limit`` records through per ``period_s``; counts the rest."""

    def __init__(
        self, limit: int = 10, period_s: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.period_s = period_s
        self._clock = clock
        self._window_start = -period_s
        self._used = 0
        self.suppressed = 0

    def allow(self) -> int | None:
        """None to drop this record, else how many were dropped since the last one passed."""
        now = self._clock()
        if now - self._window_start >= self.period_s:
            self._window_start = now
            self._used = 0
        if self._used >= self.limit:
            self.suppressed += 1
            return None
        self._used += 1
        dropped, self.suppressed = self.suppressed, 0
        return dropped


_client_log_limiter = LogLimiter()


def log_client_mistake(event: str, message: str, **fields: object) -> None:
    """One info line for a client's mistake, rate-limited per process (never a traceback)."""
    dropped = _client_log_limiter.allow()
    if dropped is None:
        return
    extra: dict[str, object] = {"event": event, **fields}
    if dropped:
        extra["suppressed"] = dropped
    log.info(message, extra=extra)


# Messages uvicorn and websockets log about a client's mistake; they are kept at info,
# stripped of tracebacks and rate-limited so a hostile client cannot flood the log.
_CLIENT_NOISE = frozenset(
    {
        "Invalid UTF-8 sequence received from client.",
        "Invalid HTTP request received.",
        "Unsupported upgrade request.",
        "connection rejected (%d %s)",
        "HTTP response sent (%d %s)",
        '%s - "WebSocket %s" %d',
        '%s - "WebSocket %s" 403',
    }
)


class ClientNoiseFilter(logging.Filter):
    """Demotes and rate-limits the server library's lines about client mistakes."""

    def __init__(self, limiter: LogLimiter | None = None) -> None:
        super().__init__()
        self.limiter = limiter or LogLimiter()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg not in _CLIENT_NOISE:
            return True
        if self.limiter.allow() is None:
            return False
        if record.levelno > logging.INFO:
            record.levelno = logging.INFO
            record.levelname = "INFO"
        record.exc_info = None
        record.exc_text = None
        return True


class Ticket:
    """One pending handshake: holds a slot in the gate until released (once)."""

    __slots__ = ("_gate", "claimed", "deadline", "released", "timer")

    def __init__(self, gate: HandshakeGate, deadline: float) -> None:
        self._gate = gate
        self.deadline = deadline
        self.claimed = False
        self.released = False
        self.timer: asyncio.TimerHandle | None = None

    def cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def release(self) -> None:
        self.cancel_timer()
        if not self.released:
            self.released = True
            self._gate.pending -= 1


class HandshakeGate:
    """Per-process count of pending handshakes, with their deadline."""

    def __init__(self, timeout_s: float, max_pending: int, max_header_bytes: int) -> None:
        self.timeout_s = timeout_s
        self.max_pending = max_pending
        self.max_header_bytes = max_header_bytes
        self.pending = 0
        self.refused = 0
        self.expired = 0

    def admit(self, now: float) -> Ticket | None:
        """A ticket with a deadline ``timeout_s`` from ``now``, or None at the cap."""
        if self.pending >= self.max_pending:
            self.refused += 1
            return None
        self.pending += 1
        return Ticket(self, now + self.timeout_s)


# The ticket of the connection whose WebSocket app task is being created; that task
# copies the context, so the ASGI guard finds the ticket its transport started with.
current_ticket: contextvars.ContextVar[Ticket | None] = contextvars.ContextVar(
    "gateway_handshake_ticket", default=None
)


def _denial(status: int, code: str, message: str) -> tuple[Message, Message]:
    body = error_json(
        status, code, message, "invalid_request_error" if status < 500 else "server_error"
    )
    start: Message = {
        "type": "websocket.http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ],
    }
    return start, {"type": "websocket.http.response.body", "body": body}


class HandshakeGuard:
    """ASGI middleware: WebSocket handshakes finish by their deadline and fit the cap."""

    def __init__(self, app: ASGIApp, gate: HandshakeGate) -> None:
        self.app = app
        self.gate = gate

    async def _deny(self, scope: Scope, send: Send, status: int, code: str, message: str) -> None:
        if "websocket.http.response" in scope.get("extensions", {}):
            for event in _denial(status, code, message):
                await send(event)
        else:
            await send({"type": "websocket.close", "code": 1013 if status >= 500 else 1008})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        ticket = current_ticket.get()
        if ticket is None or ticket.claimed or ticket.released:
            ticket = self.gate.admit(loop.time())
            if ticket is None:
                log_client_mistake(
                    "handshake_cap",
                    "too many pending handshakes; refused",
                    limit=self.gate.max_pending,
                )
                await self._deny(
                    scope, send, 503, "server_busy", "too many pending handshakes; retry"
                )
                return
        ticket.claimed = True
        ticket.cancel_timer()
        answered = False
        timeout: asyncio.Timeout | None = None

        async def guarded_send(message: Message) -> None:
            nonlocal answered
            if not answered and message["type"] in _HANDSHAKE_END:
                answered = True
                if timeout is not None:
                    timeout.reschedule(None)
                ticket.release()
            await send(message)

        try:
            async with asyncio.timeout_at(ticket.deadline) as timeout:
                await self.app(scope, receive, guarded_send)
        except TimeoutError:
            if answered or timeout is None or not timeout.expired():
                raise
            self.gate.expired += 1
            log_client_mistake("handshake_timeout", "handshake not answered before its deadline")
            await self._deny(
                scope, send, 503, "handshake_timeout", "handshake took too long; retry"
            )
        finally:
            ticket.release()


# -- uvicorn protocol layer -------------------------------------------------------------


def _plain_response(status_line: str, text: str, *extra: str) -> bytes:
    body = text.encode()
    head = [status_line, "content-type: text/plain", f"content-length: {len(body)}", *extra]
    return ("\r\n".join([*head, "connection: close", "", ""])).encode() + body


_TIMEOUT_RESPONSE = _plain_response("HTTP/1.1 408 Request Timeout", "request headers too slow\n")
_BUSY_RESPONSE = _plain_response(
    "HTTP/1.1 503 Service Unavailable", "too many pending handshakes\n", "retry-after: 1"
)
_TOO_LARGE_RESPONSE = _plain_response(
    "HTTP/1.1 431 Request Header Fields Too Large", "request headers too large\n"
)


# After a refusal the peer may still be sending; closing at once would answer its
# next bytes with a reset that can destroy our response before it is read. So: send,
# shut our side, discard what still arrives, and close after a short linger.
REFUSAL_LINGER_S = 1.0


def _refuse(proto: Any, response: bytes) -> None:
    transport: asyncio.Transport = proto.transport
    if transport.is_closing() or getattr(proto, "_gw_refused", False):
        return
    proto._gw_refused = True
    transport.write(response)
    if transport.can_write_eof():
        transport.write_eof()
    asyncio.get_running_loop().call_later(REFUSAL_LINGER_S, transport.close)


def _expire(ticket: Ticket, proto: Any, gate: HandshakeGate) -> None:
    ticket.timer = None
    if ticket.claimed or ticket.released:
        return
    ticket.release()
    if not proto.transport.is_closing():
        gate.expired += 1
        log_client_mistake("handshake_timeout", "request headers not complete before the deadline")
        _refuse(proto, _TIMEOUT_RESPONSE)


def _arm(proto: Any, gate: HandshakeGate) -> None:
    """Start the deadline for the request now arriving on ``proto``'s transport."""
    loop = asyncio.get_running_loop()
    ticket = gate.admit(loop.time())
    proto._gw_ticket = ticket
    proto._gw_bytes = 0
    if ticket is None:
        log_client_mistake(
            "handshake_cap", "too many pending handshakes; refused", limit=gate.max_pending
        )
        _refuse(proto, _BUSY_RESPONSE)
        return
    ticket.timer = loop.call_at(ticket.deadline, _expire, ticket, proto, gate)


def _live_ticket(proto: Any) -> Ticket | None:
    ticket: Ticket | None = getattr(proto, "_gw_ticket", None)
    if ticket is None or ticket.released:
        return None
    return ticket


_installed_gate: HandshakeGate | None = None


def install_ingress_guard(gate: HandshakeGate) -> HandshakeGate:
    """Patch uvicorn's httptools and websockets-sansio protocols; the first gate wins.

    Idempotent per process; returns the gate in use so the ASGI guard shares it.
    """
    global _installed_gate
    if _installed_gate is not None:
        return _installed_gate
    _installed_gate = gate
    logging.getLogger("uvicorn.error").addFilter(ClientNoiseFilter())
    _patch_httptools(gate)
    _patch_sansio()
    return gate


def _patch_httptools(gate: HandshakeGate) -> None:
    """Wrap the httptools protocol's hooks so each connection holds a handshake ticket.

    Long because each wrapper closes over the original method it replaces; the six
    wrappers read best side by side with the assignments that install them.
    """
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # httptools missing: uvicorn uses h11, which bounds headers itself
        log.warning("httptools not installed: no handshake deadline for slow request headers")
        return
    cls: Any = HttpToolsProtocol
    made, lost, begin = cls.connection_made, cls.connection_lost, cls.on_message_begin
    received, headers_done, upgrade = (
        cls.data_received,
        cls.on_headers_complete,
        cls.handle_websocket_upgrade,
    )

    def connection_made(self: Any, transport: asyncio.Transport) -> None:
        made(self, transport)
        _arm(self, gate)

    def on_message_begin(self: Any) -> None:
        begin(self)
        if _live_ticket(self) is None and not self.transport.is_closing():
            _arm(self, gate)  # the next request on a kept-alive connection

    def data_received(self: Any, data: bytes) -> None:
        if getattr(self, "_gw_refused", False) or self.transport.is_closing():
            return  # refused: what still arrives is discarded
        received(self, data)
        if _live_ticket(self) is not None:
            self._gw_bytes += len(data)
            if self._gw_bytes > gate.max_header_bytes:
                _live_ticket(self).release()  # type: ignore[union-attr]
                log_client_mistake("headers_too_large", "request headers over the limit; 431")
                _refuse(self, _TOO_LARGE_RESPONSE)

    def on_headers_complete(self: Any) -> None:
        headers_done(self)
        ticket = _live_ticket(self)
        if ticket is not None and not (self.parser.should_upgrade() and self._should_upgrade()):
            ticket.release()  # plain HTTP: the headers arrived in time

    def handle_websocket_upgrade(self: Any) -> None:
        ticket = _live_ticket(self)
        token = current_ticket.set(ticket)
        try:
            upgrade(self)
        finally:
            current_ticket.reset(token)
        if ticket is not None and self.transport.is_closing():
            ticket.release()  # refused by the WebSocket layer before reaching the app

    def connection_lost(self: Any, exc: Exception | None) -> None:
        ticket = _live_ticket(self)
        if ticket is not None and not ticket.claimed:
            ticket.release()
        lost(self, exc)

    cls.connection_made = connection_made
    cls.connection_lost = connection_lost
    cls.on_message_begin = on_message_begin
    cls.data_received = data_received
    cls.on_headers_complete = on_headers_complete
    cls.handle_websocket_upgrade = handle_websocket_upgrade


def _patch_sansio() -> None:
    try:
        from uvicorn.protocols.websockets.websockets_sansio_impl import (
            WebSocketsSansIOProtocol,
        )
    except ImportError:
        return
    cls: Any = WebSocketsSansIOProtocol
    received, send = cls.data_received, cls.send

    def data_received(self: Any, data: bytes) -> None:
        received(self, data)
        refused = getattr(self.conn, "handshake_exc", None) is not None
        if refused and not getattr(self, "handshake_initiated", False):
            # The request was refused while parsing (e.g. 431): write the queued
            # response and close, which the stock protocol never does.
            log_client_mistake(
                "bad_handshake_request", "WebSocket upgrade request refused while parsing"
            )
            self.handshake_initiated = self.handshake_complete = self.close_sent = True
            output = b"".join(self.conn.data_to_send())
            if not self.transport.is_closing():
                self.transport.write(output)
                self.transport.close()

    async def guarded_send(self: Any, message: Message) -> None:
        await send(self, message)
        if getattr(self, "initial_response", None) is not None and self.close_sent:
            self.handshake_complete = True  # the denial response was written in full

    cls.data_received = data_received
    cls.send = guarded_send
    offer_text_frames(cls)
