"""The WebSocket endpoint: one ``SimSocket`` per accepted connection.

A reader loop takes client frames; each ``response.create`` streams from its own task so
the reader can still refuse a second one while the first is in flight (one response per
socket). The socket's latest response is its continuation cache, whatever ``store`` was.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import msgspec
from starlette.responses import JSONResponse
from starlette.websockets import WebSocket

from sim.core import INVALID_KEY, Prepared, SimCore, bearer, new_response
from sim.events import encode, error_event, stamp
from sim.faults import FaultBook, FaultRule, Occasion
from sim.model import Answer, StoredResponse, answer_for
from sim.records import ConnectionRecord, RequestRecord

AGE_LIMIT_MESSAGE = (
    "Responses websocket connection limit reached (60 minutes). "
    "Create a new websocket connection to continue."
)
_CLIENT_SIDE_CODES = ("previous_response_not_found", "websocket_connection_limit_reached")


@dataclass(slots=True)
class _StreamFaults:
    """The fault rules one streamed response took, and which of them fired."""

    first_delay: FaultRule | None
    cut: FaultRule | None
    fail: FaultRule | None
    mute: FaultRule | None
    fired: list[FaultRule] = field(default_factory=list)

    @classmethod
    def take(cls, book: FaultBook, occasion: Occasion) -> _StreamFaults:
        return cls(
            first_delay=book.take("first_byte_delay_ms", occasion),
            cut=book.take("close_after_events", occasion),
            fail=book.take("error_event", occasion, lambda r: r.after_events > 0),
            mute=book.take("silence", occasion),
        )

    def settle(self, book: FaultBook, request: RequestRecord) -> None:
        """Give back the rules that did not fire (another request may use them)."""
        taken = (self.first_delay, self.cut, self.fail, self.mute)
        for rule in taken:
            if rule is not None and not any(rule is f for f in self.fired):
                book.give_back(rule)
        request.faults.extend(r.id for r in self.fired)


class TcpTransport(Protocol):
    """What we use of the socket's transport (asyncio's or uvloop's, which share no base)."""

    def abort(self) -> None: ...
    def pause_reading(self) -> None: ...


def _transport_of(ws: WebSocket) -> TcpTransport | None:
    # Put in the scope by app.TransportTap; needed to drop TCP without a close frame and
    # to stop reading (a half-open socket).
    transport = ws.scope.get("sim.transport")
    if hasattr(transport, "abort") and hasattr(transport, "pause_reading"):
        return cast(TcpTransport, transport)
    return None


def _rule_error(rule: FaultRule) -> dict[str, Any]:
    """The ``error`` event an ``error_event`` rule asks for (code default: server_error)."""
    code = "server_error" if rule.code is None else str(rule.code)
    status = rule.status or (400 if code in _CLIENT_SIDE_CODES else 500)
    message = rule.message or "The server had an error while processing your request (simulated)."
    if code == "previous_response_not_found":
        return error_event(
            status,
            code,
            rule.message or "Previous response not found.",
            rule.param or "previous_response_id",
            rule.retry_after,
        )
    if code == "websocket_connection_limit_reached":
        message = rule.message or AGE_LIMIT_MESSAGE
    return error_event(status, code, message, rule.param, rule.retry_after)


class SimSocket:
    def __init__(self, core: SimCore, ws: WebSocket, record: ConnectionRecord) -> None:
        self.core = core
        self.ws = ws
        self.record = record
        self.conn_id = record.conn_id
        self.account_key = record.account_key
        self.opened = time.monotonic()
        self.transport = _transport_of(ws)
        self.last: StoredResponse | None = None  # the continuation cache
        self.active: RequestRecord | None = None  # the response in flight
        self.silenced = False
        self.gone = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def busy(self) -> bool:
        return self.active is not None

    # -- sending and closing ----------------------------------------------------------
    async def send_frame(self, frame: str) -> None:
        if self.core.config.timestamps:
            frame = stamp(frame)
        await self.ws.send({"type": "websocket.send", "text": frame})

    async def send_event(self, request: RequestRecord | None, event: dict[str, Any]) -> None:
        with contextlib.suppress(Exception):
            await self.send_frame(encode(event))
            if request is not None:
                request.events_sent += 1
                self.core.counters.events_sent += 1

    async def close(self, code: int = 1000, mode: str = "close") -> None:
        """Close with ``code``, or (mode "abort") drop TCP without a close frame."""
        if self.record.closed_by is None:
            self.record.closed_by = "server"
            self.record.close_code = 1006 if mode == "abort" else code
        if mode == "abort" and self.transport is not None:
            self.transport.abort()
            return
        with contextlib.suppress(Exception):
            # No transport to abort (another server): a close frame is the nearest thing.
            await self.ws.close(code if mode == "close" else 1011)

    # -- reader -------------------------------------------------------------------------
    async def run(self) -> None:
        try:
            while True:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    if self.record.closed_by is None:
                        self.record.closed_by = "client"
                        self.record.close_code = int(message.get("code") or 1005)
                    return
                text = message.get("text")
                if text is None:
                    data = message.get("bytes") or b""
                    self._on_binary(bytes(data))
                    continue
                await self._on_frame(text)
        except Exception:  # a socket torn down under us (abort, server shutdown)
            if self.record.closed_by is None:
                self.record.closed_by, self.record.close_code = "client", 1006
        finally:
            self.record.closed_at = time.time()
            self.gone.set()
            self.core.sockets.pop(self.conn_id, None)

    def _on_binary(self, data: bytes) -> None:
        request = self.core.new_request("ws", self.conn_id, self.account_key, data.hex(), {})
        event = error_event(
            400, "invalid_frame", "Binary frames are not supported; send JSON text frames."
        )
        self.core.fail(request, event)
        self._spawn(self.send_event(request, event))

    async def _on_frame(self, text: str) -> None:
        core = self.core
        try:
            body = msgspec.json.decode(text)
        except msgspec.DecodeError:
            body = None
        request = core.new_request(
            "ws", self.conn_id, self.account_key, text, body if isinstance(body, dict) else {}
        )
        if self.silenced:
            core.finish(request, "ignored")
            return
        if not isinstance(body, dict):
            event = error_event(400, "invalid_json", "Invalid JSON: expected a JSON object.")
        elif body.get("type") != "response.create":
            kind = body.get("type")
            event = error_event(
                400,
                "unknown_event_type",
                f"Unsupported event type '{kind}'. Supported: 'response.create'.",
                "type",
            )
        elif self.active is not None:
            event = error_event(
                400,
                "conversation_already_has_active_response",
                "Conversation already has an active response in progress: "
                f"{self.active.response_id}. Wait until the response is finished "
                "before creating a new one.",
            )
        else:
            self.active = request
            self._spawn(self._respond(request, body))
            return
        core.fail(request, event)
        await self.send_event(request, event)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- one response -------------------------------------------------------------------
    async def _refuse(self, request: RequestRecord, event: dict[str, Any]) -> None:
        self.last = None  # a failed request evicts the socket's cached response
        self.active = None
        self.core.fail(request, event)
        await self.send_event(request, event)

    async def _respond(self, request: RequestRecord, body: dict[str, Any]) -> None:
        try:
            await self._respond_inner(request, body)
        finally:
            if self.active is request:
                self.active = None

    async def _respond_inner(self, request: RequestRecord, body: dict[str, Any]) -> None:
        core, key = self.core, self.account_key
        generate = body.get("generate") is not False
        age = time.monotonic() - self.opened
        limit = core.faults.take(
            "max_conn_age_s", Occasion(key, "ws", generate), lambda r: age > r.age_s
        )
        if limit is not None or age > core.config.max_conn_age_s:
            if limit is not None:
                request.faults.append(limit.id)
            await self._refuse(
                request, error_event(400, "websocket_connection_limit_reached", AGE_LIMIT_MESSAGE)
            )
            code = limit.code if limit is not None and isinstance(limit.code, int) else 1000
            await self.close(code, limit.mode if limit is not None else "close")
            return
        error, prepared = core.prepare(body, key, "ws", generate, self.last)
        if error is not None or prepared is None:
            await self._refuse(request, error or error_event(500, "server_error", "unprepared"))
            return
        occasion = Occasion(key, "ws", generate, prepared.text)
        early = core.faults.take("error_event", occasion, lambda r: r.after_events <= 0)
        if early is not None:
            request.faults.append(early.id)
            await self._refuse(request, _rule_error(early))
            return
        await self._stream(request, body, prepared, occasion, generate)

    async def _stream(
        self,
        request: RequestRecord,
        body: dict[str, Any],
        prepared: Prepared,
        occasion: Occasion,
        generate: bool,
    ) -> None:
        core = self.core
        answer = answer_for(prepared.context) if generate else Answer()
        built, stored = new_response(
            request, body, prepared, answer, generate=generate, cached_tokens=prepared.cached_tokens
        )
        store = body.get("store", True) is not False
        status = built.response["status"]
        faults = _StreamFaults.take(core.faults, occasion)
        delay = answer.delay_ms / 1000.0
        if faults.first_delay is not None:
            faults.fired.append(faults.first_delay)
            await asyncio.sleep(faults.first_delay.delay_ms / 1000.0)
        last_index = len(built.frames) - 1
        try:
            for index, frame in enumerate(built.frames):
                if await self._interrupted(request, index, faults):
                    return
                if delay and index:
                    await asyncio.sleep(delay)
                if index == last_index:
                    # The response is over once its terminal event is written: the socket's
                    # state must already say so when the client reads that event.
                    self.last = stored if status != "failed" else None
                    if store and status != "failed":
                        core.persist(self.account_key, stored)
                    self.active = None
                try:
                    await self.send_frame(frame)
                except Exception:
                    if store and status != "failed":
                        core.persist(self.account_key, stored)  # generation finishes anyway
                    closed = self.record.closed_by == "server"
                    outcome = f"closed:{self.record.close_code}" if closed else "client_gone"
                    core.finish(request, outcome)
                    return
                request.events_sent += 1
                core.counters.events_sent += 1
            request.terminal = built.types[-1]
            request.completed_delivered = True
            core.finish(request, "completed")
        finally:
            faults.settle(core.faults, request)
        after = core.faults.take("close_after_terminal", occasion)
        if after is not None:
            request.faults.append(after.id)
            code = after.code if isinstance(after.code, int) else 1000
            await self.close(code, after.mode)

    async def _interrupted(self, request: RequestRecord, index: int, faults: _StreamFaults) -> bool:
        """Fire the fault due before frame ``index``, if any; True when it ended the stream."""
        cut, fail, mute = faults.cut, faults.fail, faults.mute
        if cut is not None and index == cut.after_events:
            faults.fired.append(cut)
            self.last = None
            code = cut.code if isinstance(cut.code, int) else 1011
            self.core.finish(request, "aborted" if cut.mode == "abort" else f"closed:{code}")
            await self.close(code, cut.mode)
            return True
        if fail is not None and index == fail.after_events:
            faults.fired.append(fail)
            await self._refuse(request, _rule_error(fail))
            return True
        if mute is not None and index == mute.after_events:
            faults.fired.append(mute)
            await self._go_silent(request, mute)
            return True
        return False

    async def _go_silent(self, request: RequestRecord, rule: FaultRule) -> None:
        """Half-open: no more events, no pongs (we stop reading), then TCP is dropped."""
        self.silenced = True
        self.last = None
        self.core.finish(request, "silent")
        if self.transport is not None:
            self.transport.pause_reading()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.gone.wait(), rule.duration_s)
        await self.close(1006, "abort")


async def websocket_endpoint(core: SimCore, ws: WebSocket) -> None:
    headers = {k.lower(): v for k, v in ws.headers.items()}
    key = bearer(headers)
    record = core.open_connection(ws.url.path, key, headers)
    if not core.authorized(key):
        record.handshake_status = 401
        core.counters.handshakes_refused += 1
        await ws.send_denial_response(JSONResponse(INVALID_KEY, status_code=401))
        return
    refused = core.faults.take("handshake_status", Occasion(key))
    if refused is not None:
        status = refused.status or 503
        record.handshake_status = status
        core.counters.handshakes_refused += 1
        extra = {"retry-after": f"{refused.retry_after:g}"} if refused.retry_after else {}
        message = refused.message or f"Simulated HTTP {status} at the WebSocket handshake."
        code = refused.code if isinstance(refused.code, str) else None
        body = {"error": {"message": message, "type": "server_error", "param": None, "code": code}}
        await ws.send_denial_response(JSONResponse(body, status_code=status, headers=extra))
        return
    turn_state = headers.get("x-codex-turn-state") or core.turn_state_token()
    record.turn_state = turn_state
    await ws.accept(headers=[(b"x-codex-turn-state", turn_state.encode())])
    sock = SimSocket(core, ws, record)
    core.sockets[sock.conn_id] = sock
    await sock.run()
