"""Handshake gate, ASGI guard, log limiting and client-noise filtering."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from gateway.guard import (
    ClientNoiseFilter,
    HandshakeGate,
    HandshakeGuard,
    LogLimiter,
    current_ticket,
)

WS_SCOPE: dict[str, Any] = {"type": "websocket", "extensions": {"websocket.http.response": {}}}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_log_limiter_passes_limit_per_period_and_counts_the_rest() -> None:
    clock = Clock()
    limiter = LogLimiter(limit=2, period_s=10.0, clock=clock)
    assert [limiter.allow() for _ in range(4)] == [0, 0, None, None]
    clock.now = 10.0
    assert limiter.allow() == 2  # the two dropped lines are reported with the next one


def test_gate_caps_pending_and_release_is_idempotent() -> None:
    gate = HandshakeGate(timeout_s=5.0, max_pending=2, max_header_bytes=1024)
    first, second = gate.admit(1.0), gate.admit(1.0)
    assert first is not None and second is not None
    assert first.deadline == 6.0
    assert gate.admit(1.0) is None and gate.refused == 1
    first.release()
    first.release()
    assert gate.pending == 1
    assert gate.admit(2.0) is not None


def _record(msg: str, level: int) -> logging.LogRecord:
    record = logging.LogRecord("uvicorn.error", level, __file__, 1, msg, None, None)
    record.exc_info = (ValueError, ValueError("x"), None)
    return record


def test_noise_filter_demotes_client_mistakes_and_drops_their_traceback() -> None:
    noise = ClientNoiseFilter(LogLimiter(limit=1, period_s=60.0, clock=Clock()))
    record = _record("Invalid UTF-8 sequence received from client.", logging.ERROR)
    assert noise.filter(record)
    assert record.levelno == logging.INFO and record.exc_info is None
    assert not noise.filter(_record("Invalid HTTP request received.", logging.WARNING))
    ours = _record("Exception in ASGI application\n", logging.ERROR)
    assert noise.filter(ours) and ours.levelno == logging.ERROR


class Recorder:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def __call__(self, message: dict[str, Any]) -> None:
        self.sent.append(message)


async def _receive() -> dict[str, Any]:
    return {"type": "websocket.connect"}


async def test_guard_denies_a_handshake_the_app_does_not_answer_in_time() -> None:
    never = asyncio.Event()

    async def stuck_app(scope: Any, receive: Any, send: Any) -> None:
        await never.wait()

    gate = HandshakeGate(timeout_s=0.05, max_pending=4, max_header_bytes=1024)
    send = Recorder()
    await HandshakeGuard(stuck_app, gate)(WS_SCOPE, _receive, send)
    assert send.sent[0]["type"] == "websocket.http.response.start"
    assert send.sent[0]["status"] == 503
    assert b"handshake_timeout" in send.sent[1]["body"]
    assert gate.pending == 0 and gate.expired == 1


async def test_guard_releases_the_slot_at_accept_and_lifts_the_deadline() -> None:
    gate = HandshakeGate(timeout_s=0.05, max_pending=1, max_header_bytes=1024)
    accepted = asyncio.Event()
    proceed = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "websocket.accept"})
        accepted.set()
        await proceed.wait()  # a long session: no deadline applies any more
        await send({"type": "websocket.close", "code": 1000})

    send = Recorder()
    task = asyncio.create_task(HandshakeGuard(app, gate)(WS_SCOPE, _receive, send))
    await accepted.wait()
    assert gate.pending == 0
    await asyncio.sleep(0.1)  # well past the 50 ms handshake deadline
    proceed.set()
    await task
    assert [m["type"] for m in send.sent] == ["websocket.accept", "websocket.close"]


async def test_guard_refuses_over_the_cap_with_503() -> None:
    gate = HandshakeGate(timeout_s=5.0, max_pending=1, max_header_bytes=1024)
    held = gate.admit(0.0)
    assert held is not None

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("the app must not run over the cap")

    send = Recorder()
    await HandshakeGuard(app, gate)(WS_SCOPE, _receive, send)
    assert send.sent[0]["status"] == 503
    assert b"server_busy" in send.sent[1]["body"]


async def test_guard_adopts_the_ticket_started_by_the_protocol_layer() -> None:
    gate = HandshakeGate(timeout_s=5.0, max_pending=1, max_header_bytes=1024)
    ticket = gate.admit(asyncio.get_running_loop().time())
    assert ticket is not None

    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert gate.pending == 1  # the protocol layer's slot, not a second one
        await send({"type": "websocket.accept"})

    token = current_ticket.set(ticket)
    try:
        await HandshakeGuard(app, gate)(WS_SCOPE, _receive, Recorder())
    finally:
        current_ticket.reset(token)
    assert ticket.claimed and ticket.released and gate.pending == 0


async def test_guard_passes_http_through_untouched() -> None:
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    gate = HandshakeGate(timeout_s=5.0, max_pending=1, max_header_bytes=1024)
    await HandshakeGuard(app, gate)({"type": "http"}, _receive, Recorder())
    assert seen == ["http"] and gate.pending == 0


def test_raw_refusals_are_well_formed_http() -> None:
    from gateway import guard

    for raw in (guard._TIMEOUT_RESPONSE, guard._BUSY_RESPONSE, guard._TOO_LARGE_RESPONSE):
        head, body = raw.split(b"\r\n\r\n", 1)
        lines = head.split(b"\r\n")
        assert lines[0].split(b" ")[1] in (b"408", b"503", b"431")
        assert f"content-length: {len(body)}".encode() in lines
        assert b"connection: close" in lines
