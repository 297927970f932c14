"""An in-process upstream for unit tests of the turn loop: what httpx's MockTransport is
to an httpx client, this is to the gateway's pooled WebSockets.

``FakeUpstream`` answers each ``response.create`` sent on a ``FakeSocket`` with a script
of steps (frames, a close, silence), keeps a connection-local previous response per
socket and a store of ``store: true`` responses, and applies the upstream's pairing
rules (an output needs its call, a call needs its output). Tests queue faults on it and
read back what it received.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.upstream.ws import HandshakeRejected, UpstreamClosed

CALL_MARK = "CALL"  # a user message containing it gets a function call back


@dataclass(frozen=True)
class Close:
    """Close the socket with this code instead of sending more."""

    code: int = 1011


@dataclass(frozen=True)
class Silence:
    """Stop sending; with ``half_open`` pings go unanswered too."""

    half_open: bool = True


Step = str | Close | Silence
Responder = Callable[["FakeSocket", dict[str, Any]], list[Step] | None]


def event(etype: str, **fields: Any) -> str:
    return json.dumps({"type": etype, **fields})


def error_frame(status: int, message: str, code: str | None = None) -> str:
    return event(
        "error",
        status=status,
        error={"type": "invalid_request_error", "code": code, "message": message},
    )


@dataclass
class FakeUpstream:
    """The scripted server behind every FakeSocket of a test."""

    deltas: int = 2
    requests: list[dict[str, Any]] = field(default_factory=list)
    sockets: list[FakeSocket] = field(default_factory=list)
    # account -> response id -> context: a stored response lives on its account only
    stored: dict[str, dict[str, list[dict[str, Any]]]] = field(default_factory=dict)
    dial_failures: collections.deque[Exception] = field(default_factory=collections.deque)
    # One-shot overrides, consumed by the next response.create(s) in order.
    scripts: collections.deque[Responder] = field(default_factory=collections.deque)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    # -- faults ------------------------------------------------------------------------
    def refuse_dials(self, status: int, times: int = 1, **headers: str) -> None:
        for _ in range(times):
            self.dial_failures.append(HandshakeRejected(status, dict(headers), b"{}"))

    def then(self, responder: Responder) -> None:
        self.scripts.append(responder)

    def fail_next(self, *steps: Step) -> None:
        """The next response.create gets exactly these steps."""
        self.then(lambda _sock, _body: list(steps))

    # -- answering -----------------------------------------------------------------------
    def answer(self, sock: FakeSocket, body: dict[str, Any]) -> list[Step]:
        self.requests.append(body)
        if self.scripts:
            steps = self.scripts.popleft()(sock, body)
            if steps is not None:
                return steps
        problem = self._check(sock, body)
        if problem is not None:
            return [problem]
        if body.get("generate") is False:
            return self._response(sock, body, [], "warm-up")
        text = json.dumps(body.get("input", ""))
        output: list[dict[str, Any]] = []
        if CALL_MARK in text.split("function_call_output")[-1]:
            output.append(
                {
                    "type": "function_call",
                    "call_id": f"call_{next(self._ids)}",
                    "name": "exec",
                    "arguments": "{}",
                }
            )
        return self._response(sock, body, output, "ok")

    def _response(
        self, sock: FakeSocket, body: dict[str, Any], output: list[dict[str, Any]], text: str
    ) -> list[Step]:
        rid = f"resp_{next(self._ids)}"
        message = {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": text}],
        }
        out = [message, *output]
        frames: list[Step] = [event("response.created", response={"id": rid, "model": "m"})]
        frames += [event("response.output_text.delta", delta=text) for _ in range(self.deltas)]
        usage = {"input_tokens": 3, "output_tokens": 2, "total_tokens": 5}
        response = {"id": rid, "status": "completed", "model": "m", "output": out, "usage": usage}
        frames.append(event("response.completed", response=response))
        context = self._context(sock, body) or []
        items = body.get("input") if isinstance(body.get("input"), list) else []
        sock.last = (rid, [*context, *items, *out])
        if body.get("store") is not False:
            self.stored.setdefault(sock.account, {})[rid] = [*context, *items, *out]
        return frames

    def _context(self, sock: FakeSocket, body: dict[str, Any]) -> list[dict[str, Any]] | None:
        prev = body.get("previous_response_id")
        if prev is None:
            return []
        if sock.last is not None and sock.last[0] == prev:
            return sock.last[1]
        return self.stored.get(sock.account, {}).get(prev)

    def _check(self, sock: FakeSocket, body: dict[str, Any]) -> Step | None:
        context = self._context(sock, body)
        if context is None:
            return error_frame(
                400,
                f"Previous response with id '{body['previous_response_id']}' not found.",
                "previous_response_not_found",
            )
        items = body.get("input") if isinstance(body.get("input"), list) else []
        calls: set[str] = set()
        answered: set[str] = set()
        for item in [*context, *items]:
            kind, call_id = item.get("type", ""), item.get("call_id")
            if kind.endswith("_call"):
                calls.add(call_id)
            elif kind.endswith("_output"):
                if call_id not in calls:
                    return error_frame(
                        400,
                        f"No tool call found for function call output with call_id {call_id}.",
                    )
                answered.add(call_id)
        missing = sorted(calls - answered)
        if missing:
            return error_frame(400, f"No tool output found for function call {missing[0]}.")
        return None


class FakeSocket:
    """One upstream WebSocket, with the interface the pool and forwarders use."""

    def __init__(self, upstream: FakeUpstream, conn_id: str) -> None:
        self.upstream = upstream
        self.conn_id = conn_id
        self.account = conn_id.split(":")[1]
        self.response_headers: dict[str, str] = {"x-codex-turn-state": "ts_upstream"}
        self.last: tuple[str, list[dict[str, Any]]] | None = None
        self.close_info: UpstreamClosed | None = None
        self.half_open = False
        self.pings = 0
        self._inbox: asyncio.Queue[Step] = asyncio.Queue()
        self._pending: collections.deque[str | bytes] = collections.deque()

    @property
    def closed(self) -> bool:
        return self.close_info is not None

    async def send_text(self, data: str | bytes, timeout: float | None = None) -> None:
        if self.close_info is not None:
            raise self.close_info
        body = json.loads(data)
        for step in self.upstream.answer(self, body):
            self._inbox.put_nowait(step)

    async def recv(self, timeout: float | None = None) -> str | bytes:
        if self._pending:
            return self._pending.popleft()
        if self.close_info is not None:
            raise self.close_info
        async with asyncio.timeout(timeout):
            while True:
                step = await self._inbox.get()
                if isinstance(step, str):
                    return step
                if isinstance(step, Close):
                    self.close_info = UpstreamClosed(step.code, "closed by fake upstream")
                    raise self.close_info
                self.half_open = step.half_open
                await asyncio.Event().wait()  # silence: nothing more will come

    def recv_nowait(self) -> str | bytes | None:
        return self._pending.popleft() if self._pending else None

    def push_back(self, message: str | bytes) -> None:
        self._pending.appendleft(message)

    async def ping(self, timeout: float) -> None:
        self.pings += 1
        if self.close_info is not None:
            raise self.close_info
        if self.half_open:
            async with asyncio.timeout(timeout):
                await asyncio.Event().wait()

    def abort(self) -> None:
        self.close_info = self.close_info or UpstreamClosed(1006, "aborted")

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        self.close_info = self.close_info or UpstreamClosed(code, reason or "closed")

    def watch_idle(self) -> None:
        pass

    def stop_watch(self) -> None:
        pass


class FakeDialer:
    """The pool's Dialer: a FakeSocket per dial, or the next queued dial failure."""

    def __init__(self, upstream: FakeUpstream) -> None:
        self.upstream = upstream
        self.dials: list[str] = []

    async def dial(self, account_id: str) -> FakeSocket:
        self.dials.append(account_id)
        if self.upstream.dial_failures:
            raise self.upstream.dial_failures.popleft()
        sock = FakeSocket(self.upstream, f"fake:{account_id}:{len(self.dials)}")
        self.upstream.sockets.append(sock)
        return sock
