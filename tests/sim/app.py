"""A protocol-faithful stand-in for the OpenAI Responses API (WebSocket + HTTP/SSE).

Rules it enforces like the real API: one response in flight per socket; a
``previous_response_id`` resolves to the socket's latest response whatever ``store``
was, or to a persisted (``store: true``) response of the same account on any socket
or over HTTP, else ``previous_response_not_found``; every tool call needs exactly one
output and every output a call; a failed request evicts the socket's cached response.
Fault rules (``POST /__sim/faults``) inject the failures peers hit in production, and
``GET /__sim/log`` tells tests exactly what arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from tests.sim.model import (
    StoredResponse,
    answer_for,
    error_event,
    input_items,
    last_user_text,
    new_id,
    pairing_error,
    parse_script,
    response_events,
)

_encoder = msgspec.json.Encoder()


@dataclass
class SimConfig:
    keys: tuple[str, ...] = ()
    timestamps: bool = False


@dataclass
class SimConn:
    conn_id: str
    account_key: str
    ws: WebSocket
    opened_at: float
    record: dict[str, Any]
    last: StoredResponse | None = None
    busy: bool = False
    task: asyncio.Task[None] | None = None


@dataclass
class SimState:
    config: SimConfig
    conns: dict[str, SimConn] = field(default_factory=dict)
    persisted: dict[str, dict[str, StoredResponse]] = field(default_factory=dict)
    connections: list[dict[str, Any]] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    faults: list[dict[str, Any]] = field(default_factory=list)
    seq: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    rng: random.Random = field(default_factory=lambda: random.Random(1234))

    def take_fault(self, kind: str, account_key: str, **match: Any) -> dict[str, Any] | None:
        for rule in self.faults:
            if rule["kind"] != kind or rule.get("times", 1) <= 0:
                continue
            if rule.get("account_key") not in (None, account_key):
                continue
            if any(rule.get(k) not in (None, v) for k, v in match.items()):
                continue
            if "probability" in rule and self.rng.random() >= float(rule["probability"]):
                continue  # a random fault rule that did not fire this time
            rule["times"] = rule.get("times", 1) - 1
            return rule
        return None

    def reset(self) -> None:
        self.persisted.clear()
        self.connections.clear()
        self.requests.clear()
        self.faults.clear()


def _bearer(headers: dict[str, str]) -> str:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


class Simulator:
    def __init__(self, config: SimConfig) -> None:
        self.state = SimState(config)

    def _authorized(self, key: str) -> bool:
        keys = self.state.config.keys
        return bool(key) and (not keys or key in keys)

    def _encode(self, event: dict[str, Any]) -> str:
        if self.state.config.timestamps:
            event = {**event, "sim_t_ns": time.time_ns()}
        return _encoder.encode(event).decode()

    # -- WebSocket -----------------------------------------------------------------------
    async def ws_endpoint(self, ws: WebSocket) -> None:
        st = self.state
        headers = {k.lower(): v for k, v in ws.headers.items()}
        key = _bearer(headers)
        conn_id = f"sim-conn-{next(st.seq)}"
        record: dict[str, Any] = {
            "conn_id": conn_id,
            "account_key": key,
            "path": ws.url.path,
            "headers": headers,
            "opened_at": time.time(),
            "closed_at": None,
            "close_code": None,
            "handshake_status": 101,
        }
        st.connections.append(record)
        if not self._authorized(key):
            record["handshake_status"] = 401
            body = {
                "error": {
                    "message": "Incorrect API key provided.",
                    "type": "invalid_request_error",
                    "code": "invalid_api_key",
                }
            }
            await ws.send_denial_response(JSONResponse(body, status_code=401))
            return
        refused = st.take_fault("handshake_status", key)
        if refused is not None:
            status = int(refused.get("status", 503))
            record["handshake_status"] = status
            extra = (
                {"retry-after": str(refused["retry_after"])} if refused.get("retry_after") else {}
            )
            await ws.send_denial_response(
                JSONResponse(
                    {
                        "error": {
                            "message": f"simulated HTTP {status}",
                            "type": "server_error",
                            "code": None,
                        }
                    },
                    status_code=status,
                    headers=extra,
                )
            )
            return
        await ws.accept(headers=[(b"x-codex-turn-state", f"ts-{conn_id}".encode())])
        conn = SimConn(conn_id, key, ws, time.monotonic(), record)
        st.conns[conn_id] = conn
        try:
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    record["close_code"] = message.get("code")
                    break
                text = message.get("text")
                if text is None and message.get("bytes") is not None:
                    text = bytes(message["bytes"]).decode("utf-8", "replace")
                await self._on_frame(conn, text or "")
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            record["closed_at"] = record["closed_at"] or time.time()
            st.conns.pop(conn_id, None)
            if conn.task is not None:
                with contextlib.suppress(BaseException):
                    await conn.task

    async def _send(self, conn: SimConn, event: dict[str, Any]) -> bool:
        try:
            await conn.ws.send_text(self._encode(event))
            return True
        except Exception:
            return False

    async def _on_frame(self, conn: SimConn, text: str) -> None:
        try:
            body = json.loads(text)
            if not isinstance(body, dict):
                raise ValueError("not an object")
        except ValueError:
            await self._send(
                conn, error_event(400, "invalid_json", "Invalid JSON in WebSocket message.")
            )
            return
        kind = body.get("type", "response.create")
        if kind != "response.create":
            await self._send(
                conn, error_event(400, "unknown_event_type", f"Unsupported event type '{kind}'.")
            )
            return
        if conn.busy:
            await self._send(
                conn,
                error_event(
                    400,
                    "conversation_already_has_active_response",
                    "Conversation already has an active response in progress.",
                ),
            )
            return
        conn.busy = True
        conn.task = asyncio.get_running_loop().create_task(self._respond_ws(conn, body, text))

    def _new_request(
        self, transport: str, conn_id: str | None, key: str, body: dict[str, Any], raw: str
    ) -> dict[str, Any]:
        try:
            n_items = len(input_items(body.get("input")))
        except ValueError:
            n_items = 0
        req = {
            "seq": len(self.state.requests) + 1,
            "transport": transport,
            "conn_id": conn_id,
            "account_key": key,
            "raw": raw,
            "type": body.get("type"),
            "previous_response_id": body.get("previous_response_id"),
            "store": body.get("store"),
            "generate": body.get("generate"),
            "input_len": n_items,
            "outcome": "in_flight",
            "response_id": None,
            "events_sent": 0,
            "completed_delivered": False,
        }
        self.state.requests.append(req)
        return req

    def _resolve(self, conn: SimConn | None, key: str, prev: str) -> StoredResponse | None:
        if conn is not None and conn.last is not None and conn.last.id == prev:
            return conn.last
        return self.state.persisted.get(key, {}).get(prev)

    def _prepare(
        self, conn: SimConn | None, key: str, body: dict[str, Any]
    ) -> tuple[dict[str, Any] | None, list[dict[str, Any]], list[dict[str, Any]]]:
        """(error event or None, effective context, new items)."""
        st = self.state
        try:
            items = input_items(body.get("input"))
        except ValueError as exc:
            return error_event(400, "invalid_value", str(exc), "input"), [], []
        prev = body.get("previous_response_id")
        if prev and st.take_fault("previous_response_not_found", key):
            return (
                error_event(
                    400,
                    "previous_response_not_found",
                    f"Previous response with id '{prev}' not found.",
                    "previous_response_id",
                ),
                [],
                [],
            )
        stored = None
        if prev:
            stored = self._resolve(conn, key, prev)
            if stored is None:
                return (
                    error_event(
                        400,
                        "previous_response_not_found",
                        f"Previous response with id '{prev}' not found.",
                        "previous_response_id",
                    ),
                    [],
                    [],
                )
        context = (stored.context + stored.output if stored else []) + items
        if st.take_fault("tool_output_missing", key):
            call_ids = [
                i.get("call_id")
                for i in (stored.output if stored else context)
                if i.get("type") == "function_call"
            ]
            first = call_ids[0] if call_ids else "call_unknown"
            return (
                error_event(400, None, f"No tool output found for function call {first}.", "input"),
                [],
                [],
            )
        complaint = pairing_error(context)
        if complaint:
            return error_event(400, None, complaint, "input"), [], []
        return None, context, items

    async def _respond_ws(self, conn: SimConn, body: dict[str, Any], raw: str) -> None:
        st = self.state
        key = conn.account_key
        req = self._new_request("ws", conn.conn_id, key, body, raw)
        try:
            age_rule = next(
                (
                    r
                    for r in st.faults
                    if r["kind"] == "max_conn_age_s" and r.get("account_key") in (None, key)
                ),
                None,
            )
            if age_rule is not None and time.monotonic() - conn.opened_at > float(
                age_rule.get("age_s", 3600)
            ):
                await self._send(
                    conn,
                    error_event(
                        400,
                        "websocket_connection_limit_reached",
                        "Responses websocket connection limit reached (60 minutes). Create a new websocket connection to continue.",
                    ),
                )
                req["outcome"] = "error:websocket_connection_limit_reached"
                await conn.ws.close(1000)
                return
            early = st.take_fault("error_event", key, after_events=0)
            error, context, items = self._prepare(conn, key, body)
            if early is not None and error is None:
                error = error_event(
                    int(early.get("status", 500)),
                    early.get("code", "server_error"),
                    early.get("message", "simulated error"),
                )
            if error is not None:
                conn.last = None  # a failed request evicts the cached response
                req["outcome"] = f"error:{error['error']['code'] or error['error']['message']}"
                if await self._send(conn, error):
                    req["events_sent"] = 1
                return
            await self._stream(conn, req, body, context, items)
        finally:
            conn.busy = False

    async def _stream(
        self,
        conn: SimConn,
        req: dict[str, Any],
        body: dict[str, Any],
        context: list[dict[str, Any]],
        items: list[dict[str, Any]],
    ) -> None:
        st = self.state
        key = conn.account_key
        generate = body.get("generate") is not False
        answer = answer_for(context, items)
        response_id = new_id("resp")
        req["response_id"] = response_id
        events, output = response_events(
            response_id, str(body.get("model") or "sim-model"), answer, context, generate
        )
        delay = parse_script(last_user_text(context)).delay_ms / 1000.0
        first_delay = st.take_fault("first_byte_delay_ms", key)
        if first_delay is not None:
            await asyncio.sleep(float(first_delay.get("delay_ms", 100)) / 1000.0)
        close_rule = st.take_fault("close_after_events", key)
        error_rule = st.take_fault("error_event", key)
        silence_rule = st.take_fault("silence", key)
        client_gone = False
        for index, event in enumerate(events):
            if close_rule is not None and index >= int(close_rule.get("after_events", 0)):
                req["outcome"] = f"closed:{close_rule.get('code', 1011)}"
                conn.last = None
                await conn.ws.close(int(close_rule.get("code", 1011)))
                return
            if error_rule is not None and index >= int(error_rule.get("after_events", 0)):
                conn.last = None
                err = error_event(
                    int(error_rule.get("status", 500)),
                    error_rule.get("code", "server_error"),
                    error_rule.get("message", "simulated error"),
                )
                await self._send(conn, err)
                req["outcome"] = f"error:{err['error']['code']}"
                return
            if silence_rule is not None and index >= int(silence_rule.get("after_events", 0)):
                req["outcome"] = "silent"
                await asyncio.sleep(3600)
                return
            if delay and index:
                await asyncio.sleep(delay)
            if index == len(events) - 1:
                # The response is over once its terminal event is written: the socket's
                # state must already say so when the client reads that event.
                conn.last = StoredResponse(response_id, context, output)
                if body.get("store") is True:
                    st.persisted.setdefault(key, {})[response_id] = conn.last
                conn.busy = False
            sent = await self._send(conn, event)
            if sent:
                req["events_sent"] += 1
            else:
                client_gone = True
                break
        if client_gone:
            req["outcome"] = "client_gone"
            return
        req["completed_delivered"] = True
        req["outcome"] = "completed"
        after = st.take_fault("close_after_terminal", key)
        if after is not None:
            await conn.ws.close(int(after.get("code", 1001)))

    # -- HTTP ---------------------------------------------------------------------------
    async def http_endpoint(self, request: Request) -> Response:
        st = self.state
        headers = {k.lower(): v for k, v in request.headers.items()}
        key = _bearer(headers)
        raw = (await request.body()).decode("utf-8", "replace")
        if not self._authorized(key):
            return JSONResponse(
                {
                    "error": {
                        "message": "Incorrect API key provided.",
                        "type": "invalid_request_error",
                        "code": "invalid_api_key",
                    }
                },
                status_code=401,
            )
        try:
            body = json.loads(raw)
        except ValueError:
            return JSONResponse(
                {
                    "error": {
                        "message": "Invalid JSON body.",
                        "type": "invalid_request_error",
                        "code": None,
                    }
                },
                status_code=400,
            )
        req = self._new_request("http", None, key, body, raw)
        rule = st.take_fault("http_status", key)
        if rule is not None:
            status = int(rule.get("status", 500))
            req["outcome"] = f"http:{status}"
            return JSONResponse(
                {
                    "error": {
                        "message": f"simulated HTTP {status}",
                        "type": "server_error",
                        "code": None,
                    }
                },
                status_code=status,
            )
        error, context, items = self._prepare(None, key, body)
        if error is not None:
            req["outcome"] = f"error:{error['error']['code'] or error['error']['message']}"
            return JSONResponse({"error": error["error"]}, status_code=int(error["status"]))
        response_id = new_id("resp")
        req["response_id"] = response_id
        events, output = response_events(
            response_id,
            str(body.get("model") or "sim-model"),
            answer_for(context, items),
            context,
            True,
        )
        if body.get("store") is True:
            st.persisted.setdefault(key, {})[response_id] = StoredResponse(
                response_id, context, output
            )
        if not body.get("stream"):
            req["outcome"] = "completed"
            req["completed_delivered"] = True
            return JSONResponse(events[-1]["response"])

        async def sse() -> Any:
            for event in events:
                yield f"event: {event['type']}\ndata: {self._encode(event)}\n\n"
                req["events_sent"] += 1
            req["outcome"] = "completed"
            req["completed_delivered"] = True

        return StreamingResponse(sse(), media_type="text/event-stream")

    # -- control API --------------------------------------------------------------------
    async def reset(self, request: Request) -> Response:
        self.state.reset()
        for conn in list(self.state.conns.values()):
            with contextlib.suppress(Exception):
                await conn.ws.close(1001)
        return JSONResponse({"ok": True})

    async def faults(self, request: Request) -> Response:
        if request.method == "DELETE":
            self.state.faults.clear()
            return JSONResponse({"ok": True})
        rule = await request.json()
        if "kind" not in rule:
            return JSONResponse({"error": "a fault rule needs a 'kind'"}, status_code=400)
        rule.setdefault("times", 1)
        rule["id"] = f"fault-{next(self.state.seq)}"
        self.state.faults.append(rule)
        return JSONResponse({"id": rule["id"]})

    async def log(self, request: Request) -> Response:
        st = self.state
        return JSONResponse(
            {
                "connections": st.connections,
                "requests": st.requests,
                "open_connections": len(st.conns),
            }
        )

    async def drop(self, request: Request) -> Response:
        spec = await request.json() if (await request.body()) else {}
        dropped = 0
        for conn in list(self.state.conns.values()):
            if spec.get("account_key") not in (None, conn.account_key):
                continue
            if spec.get("idle_only", True) and conn.busy:
                continue
            conn.record["closed_at"] = time.time()
            conn.record["close_code"] = int(spec.get("code", 1001))
            with contextlib.suppress(Exception):
                await conn.ws.close(int(spec.get("code", 1001)))
            dropped += 1
        return JSONResponse({"dropped": dropped})

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"ok": True})


def create_sim_app(config: SimConfig | None = None) -> Starlette:
    sim = Simulator(config or SimConfig())
    routes = [
        WebSocketRoute("/v1/responses", sim.ws_endpoint),
        WebSocketRoute("/backend-api/codex/responses", sim.ws_endpoint),
        Route("/v1/responses", sim.http_endpoint, methods=["POST"]),
        Route("/backend-api/codex/responses", sim.http_endpoint, methods=["POST"]),
        Route("/__sim/reset", sim.reset, methods=["POST"]),
        Route("/__sim/faults", sim.faults, methods=["POST", "DELETE"]),
        Route("/__sim/log", sim.log),
        Route("/__sim/drop", sim.drop, methods=["POST"]),
        Route("/__sim/healthz", sim.healthz),
    ]
    app = Starlette(routes=routes)
    app.state.sim = sim
    return app
