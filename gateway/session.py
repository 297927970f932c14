"""One client WebSocket: the read loop and the one-turn-in-flight rule.

The loop reads client frames; a ``response.create`` starts a turn task. Frames that
arrive while a turn is in flight are answered without disturbing it. When the client
goes away the turn task is NOT cancelled: it keeps draining the upstream to the
terminal event, records state, and returns the upstream socket healthy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Protocol

import msgspec
from starlette.websockets import WebSocket, WebSocketDisconnect

from gateway.auth import ClientIdentity
from gateway.events import error_event, event_type
from gateway.guard import log_client_mistake
from gateway.idle import IdleTimer
from gateway.ingress import text_frame_writer

log = logging.getLogger("gateway.session")


class ClientSink:
    """Where a turn's events go. After the client left, sends are dropped silently."""

    __slots__ = ("_close_send", "_direct", "_send", "closed_code", "gone")

    def __init__(self, websocket: WebSocket) -> None:
        # Events go straight to the server's ASGI send: the socket is accepted before a
        # sink exists, and Starlette's per-message state check costs an extra coroutine
        # per event. Its only effect here, a failed write raising, is what ``send`` catches.
        self._send = websocket._send
        self._close_send = websocket.send  # closing keeps Starlette's state in step
        # Cheaper still where the server offers it: one frame written to the transport.
        self._direct = text_frame_writer(websocket.scope)
        self.gone = False
        self.closed_code: int | None = None

    def send_nowait(self, frame: str | bytes) -> bool | None:
        """Write ``frame`` at once when the direct path can (True), or say the client is
        gone (False); None when ``send`` must be awaited (no direct path, or the socket is
        paused for writing). A relay loop saves a coroutine per event this way."""
        if self.gone:
            return False
        direct = self._direct
        if direct is None or not direct.writable.is_set():
            return None
        try:
            if direct.write(frame):
                return True
        except Exception:
            pass  # any failure to write means the client is gone, as in ``send``
        self.gone = True
        return False

    async def send(self, frame: str | bytes) -> bool:
        """Send ``frame`` as one text frame; False once the client is gone. Bytes must be
        UTF-8 (what UpstreamWS delivers is checked): the direct path writes them as is."""
        direct = self._direct
        while (sent := self.send_nowait(frame)) is None and direct is not None:
            await direct.writable.wait()  # paused for writing: as the protocol's send waits
        if sent is not None:
            return sent
        try:
            if isinstance(frame, str):
                await self._send({"type": "websocket.send", "text": frame})
            else:
                await self._send({"type": "websocket.send", "text": frame.decode()})
        except Exception:
            # Any failure to write means the client is gone; the turn keeps draining.
            self.gone = True
            return False
        return True

    async def close(self, code: int, reason: str = "") -> None:
        if self.gone:
            return
        self.gone = True
        self.closed_code = code
        with contextlib.suppress(Exception):
            await self._close_send(
                {"type": "websocket.close", "code": code, "reason": reason[:120]}
            )


class Forwarder(Protocol):
    """A forwarding mode (passthrough or ctx_pool) serving one client socket."""

    async def run_turn(self, frame: str, sink: ClientSink) -> None: ...

    async def on_other_frame(self, frame: str, etype: str, sink: ClientSink) -> None: ...

    async def aclose(self) -> None: ...


class SessionRegistry:
    """Live sessions of this process, for draining on shutdown."""

    def __init__(self) -> None:
        self.sessions: set[ClientSession] = set()
        self.turns_in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def turn_started(self) -> None:
        self.turns_in_flight += 1
        self._idle.clear()

    def turn_finished(self) -> None:
        self.turns_in_flight -= 1
        if self.turns_in_flight <= 0:
            self.turns_in_flight = 0
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
            return True
        except TimeoutError:
            return False


class ClientSession:
    def __init__(
        self,
        websocket: WebSocket,
        identity: ClientIdentity,
        headers: Mapping[str, str],
        forwarder: Forwarder,
        registry: SessionRegistry,
        *,
        idle_timeout_s: float,
        first_message_timeout_s: float,
    ) -> None:
        self.websocket = websocket
        self.identity = identity
        self.headers = headers
        self.forwarder = forwarder
        self.registry = registry
        self.sink = ClientSink(websocket)
        self.idle_timeout_s = idle_timeout_s
        self.first_message_timeout_s = first_message_timeout_s
        self.turn_task: asyncio.Task[None] | None = None
        self._loop = asyncio.get_running_loop()  # asyncio.create_task would look it up
        self._idle = IdleTimer(self._loop, lambda: self.in_turn)
        self.draining = False
        self.drain_close_code = 1012

    async def run(self) -> None:
        self.registry.sessions.add(self)
        try:
            await self._read_loop()
        finally:
            self._idle.close()
            self.sink.gone = True
            if self.turn_task is not None:
                # The client left mid-turn; let the turn drain to its terminal event.
                with contextlib.suppress(Exception):
                    await self.turn_task
            await self.forwarder.aclose()
            self.registry.sessions.discard(self)

    async def _receive(self, timeout: float) -> str | None:
        idle = self._idle
        idle.arm(timeout)
        try:
            message = await self.websocket.receive()
        except asyncio.CancelledError:
            if not idle.expired():
                raise
            await self.sink.close(1001, "idle timeout")
            return None
        except (WebSocketDisconnect, RuntimeError):
            return None
        finally:
            idle.disarm()
        kind = message["type"]
        if kind == "websocket.disconnect":
            self.sink.closed_code = message.get("code")
            return None
        text = message.get("text")
        if text is not None:
            return str(text)
        data = message.get("bytes")
        if data is not None:
            try:
                return bytes(data).decode()
            except UnicodeDecodeError:
                log_client_mistake("invalid_payload", "binary frame is not UTF-8; answered 400")
                await self.sink.send(
                    error_event(400, "invalid_payload", "binary frame is not UTF-8 JSON")
                )
                return ""
        return ""

    async def _read_loop(self) -> None:
        timeout = self.first_message_timeout_s
        while True:
            frame = await self._receive(timeout)
            timeout = self.idle_timeout_s
            if frame is None:
                return
            if not frame:
                continue
            try:
                etype = event_type(frame)
            except msgspec.DecodeError as exc:
                # A client's mistake: a precise 400, one rate-limited info line, no traceback.
                log_client_mistake("invalid_json", "malformed JSON frame; answered 400")
                await self.sink.send(error_event(400, "invalid_json", f"malformed JSON: {exc}"))
                continue
            except (RecursionError, ValueError, TypeError):
                log_client_mistake("invalid_json", "undecodable frame; answered 400")
                await self.sink.send(
                    error_event(400, "invalid_json", "message must be a JSON object")
                )
                continue
            busy = self.turn_task is not None and not self.turn_task.done()
            if etype in ("response.create", ""):
                if busy:
                    await self.sink.send(
                        error_event(
                            400,
                            "conversation_already_has_active_response",
                            "Another response is in progress on this socket; wait for its "
                            "terminal event before sending response.create.",
                        )
                    )
                    continue
                if self.draining:
                    await self.sink.send(
                        error_event(
                            503,
                            "server_shutting_down",
                            "This gateway instance is draining; reconnect.",
                        )
                    )
                    await self.sink.close(1012, "server draining")
                    return
                self.turn_task = self._loop.create_task(self._turn(frame))
                # Let the turn run up to its upstream write before this loop re-arms its
                # receive: the turn's step was queued first, so it runs first.
                await asyncio.sleep(0)
            else:
                await self.forwarder.on_other_frame(frame, etype, self.sink)

    async def _turn(self, frame: str) -> None:
        self.registry.turn_started()
        try:
            await self.forwarder.run_turn(frame, self.sink)
        except Exception:
            log.exception("turn failed unexpectedly")
            await self.sink.send(
                error_event(
                    500, "gateway_error", "internal gateway error; the turn was not completed"
                )
            )
        finally:
            self.registry.turn_finished()
            if self.draining:
                await self.sink.close(self.drain_close_code, "server draining")

    @property
    def in_turn(self) -> bool:
        return self.turn_task is not None and not self.turn_task.done()

    async def begin_drain(self, code: int) -> None:
        self.draining = True
        self.drain_close_code = code
        if not self.in_turn:
            await self.sink.close(code, "server draining")

    async def close_for_drain(self, code: int) -> None:
        self.draining = True
        await self.sink.close(code, "server draining")
