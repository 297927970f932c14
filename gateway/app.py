"""Starlette app factory: ``uvicorn gateway.app:create_app --factory``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator

import httpx
from opentelemetry.sdk.trace.export import SpanExporter
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket

from gateway.admin import admin_accounts
from gateway.auth import ClientIdentity
from gateway.config import Config, load_config
from gateway.context import GatewayContext
from gateway.drain import SignalDrain
from gateway.events import error_json
from gateway.forward.ctx_pool import CtxPoolForwarder
from gateway.forward.passthrough import PassthroughForwarder
from gateway.guard import HandshakeGate, HandshakeGuard, install_ingress_guard, log_client_mistake
from gateway.http_ingress import http_responses
from gateway.logs import bind_log_fields, reset_log_fields, setup_logging, startup_summary
from gateway.session import ClientSession, Forwarder
from gateway.upstream.headers import session_key
from pool import Dialer

log = logging.getLogger("gateway.app")

WS_PATHS = ("/v1/responses", "/backend-api/codex/responses")


def _json_error(
    status: int, code: str, message: str, error_type: str = "invalid_request_error"
) -> Response:
    return Response(
        error_json(status, code, message, error_type),
        status_code=status,
        media_type="application/json",
    )


def _log_denial(websocket: WebSocket, status: int, reason: str, **fields: object) -> None:
    client = websocket.client
    log.info(
        "handshake denied: %s",
        reason,
        extra={
            "event": "handshake_denied",
            "status": status,
            "reason": reason,
            "remote": client.host if client else "",
            **fields,
        },
    )


class Gateway:
    def __init__(
        self,
        cfg: Config,
        *,
        span_exporter: SpanExporter | None = None,
        dialer: Dialer | None = None,
        http_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.ctx = GatewayContext(
            cfg, span_exporter=span_exporter, dialer=dialer, http_transport=http_transport
        )
        # Open client sockets per client key: one key cannot hold the whole process.
        self.sockets_per_key: dict[str, int] = {}

    async def ws_endpoint(self, websocket: WebSocket) -> None:
        headers = {k.lower(): v for k, v in websocket.headers.items()}
        token = bind_log_fields(session=session_key(headers))
        try:
            await self._serve_ws(websocket, headers)
        finally:
            reset_log_fields(token)

    async def _serve_ws(self, websocket: WebSocket, headers: dict[str, str]) -> None:
        ctx = self.ctx
        metrics = ctx.metrics
        identity = ctx.directory.authenticate(headers.get("authorization"))
        if identity is None:
            metrics.handshakes.labels("unauthorized").inc()
            _log_denial(
                websocket,
                401,
                "unauthorized",
                auth_header="present" if headers.get("authorization") else "missing",
            )
            await websocket.send_denial_response(
                _json_error(
                    401,
                    "invalid_api_key",
                    "missing or unknown gateway key (Authorization: Bearer <key>)",
                    "authentication_error",
                )
            )
            return
        token = bind_log_fields(client=identity.name, client_key=identity.key_id)
        try:
            await self._serve_client(websocket, headers, identity)
        finally:
            reset_log_fields(token)

    async def _serve_client(
        self, websocket: WebSocket, headers: dict[str, str], identity: ClientIdentity
    ) -> None:
        ctx = self.ctx
        metrics = ctx.metrics
        if ctx.draining:
            metrics.handshakes.labels("draining").inc()
            _log_denial(websocket, 503, "draining")
            await websocket.send_denial_response(
                _json_error(
                    503, "server_shutting_down", "this instance is draining", "server_error"
                )
            )
            return
        if not ctx.ws_servable(identity.group):
            # Codex falls back to HTTP at once on 426 instead of retrying.
            metrics.handshakes.labels("upgrade_required").inc()
            _log_denial(websocket, 426, ctx.ws_unavailable_reason(identity.group))
            await websocket.send_denial_response(
                _json_error(
                    426,
                    "websocket_not_available",
                    "WebSocket mode is not available here; use HTTP POST /v1/responses",
                )
            )
            return
        key_label = identity.key_id
        key_sockets = self.sockets_per_key.get(key_label, 0)
        if key_sockets >= ctx.cfg.server.max_sockets_per_client_key:
            metrics.handshakes.labels("too_many_sockets").inc()
            log_client_mistake(
                "too_many_sockets",
                "client key is at its socket limit; handshake refused",
                client=key_label,
                limit=ctx.cfg.server.max_sockets_per_client_key,
            )
            await websocket.send_denial_response(
                _json_error(
                    429,
                    "too_many_connections",
                    "this client key has too many open WebSockets; close some and retry",
                    "rate_limit_error",
                )
            )
            return
        self.sockets_per_key[key_label] = key_sockets + 1  # reserved before any await
        try:
            await self._open(websocket, identity, headers)
        finally:
            left = self.sockets_per_key.get(key_label, 1) - 1
            if left > 0:
                self.sockets_per_key[key_label] = left
            else:
                self.sockets_per_key.pop(key_label, None)

    async def _open(
        self, websocket: WebSocket, identity: ClientIdentity, headers: dict[str, str]
    ) -> None:
        ctx = self.ctx
        forwarder: Forwarder
        accept_headers: list[tuple[bytes, bytes]] = []
        sess_key = session_key(headers)
        if ctx.cfg.openai_ws.mode == "passthrough":
            account = ctx.pick_account(identity.group)
            if account is None:
                ctx.metrics.handshakes.labels("no_account").inc()
                _log_denial(websocket, 503, "no_account")
                await websocket.send_denial_response(
                    _json_error(
                        503,
                        "no_account",
                        "no upstream account for this key's group",
                        "server_error",
                    )
                )
                return
            # The upstream is dialled on the first response.create: idle sockets hold none.
            forwarder = PassthroughForwarder(ctx, account, headers)
        else:
            forwarder = CtxPoolForwarder(ctx, identity, headers, sess_key)
        try:
            if isinstance(forwarder, PassthroughForwarder):
                turn_state: str | None = forwarder.turn_state
            else:
                turn_state = await forwarder.handshake_turn_state()
            if turn_state:
                accept_headers.append((b"x-codex-turn-state", turn_state.encode("latin-1")))
            accept_headers.append(
                (b"x-gateway-instance", ctx.instance_id.encode("latin-1", "replace"))
            )
            await websocket.accept(headers=accept_headers)
        except asyncio.CancelledError:  # the handshake deadline passed
            await forwarder.aclose()
            raise
        except Exception:
            await forwarder.aclose()
            return
        await self._serve(websocket, identity, headers, forwarder)

    async def _serve(
        self,
        websocket: WebSocket,
        identity: ClientIdentity,
        headers: dict[str, str],
        forwarder: Forwarder,
    ) -> None:
        ctx = self.ctx
        metrics = ctx.metrics
        metrics.handshakes.labels("accepted").inc()
        metrics.sessions.inc()
        session = ClientSession(
            websocket,
            identity,
            headers,
            forwarder,
            ctx.registry,
            idle_timeout_s=ctx.cfg.server.client_idle_timeout_s,
            first_message_timeout_s=ctx.cfg.server.first_message_timeout_s,
        )
        try:
            # In a task of its own: each client frame then resumes this short chain, not
            # the dozen middleware, routing and guard frames the ASGI call runs under.
            await asyncio.get_running_loop().create_task(session.run())
        finally:
            metrics.sessions.dec()

    async def http_endpoint(self, request: Request) -> Response:
        return await http_responses(self.ctx, request)

    async def healthz(self, request: Request) -> Response:
        return JSONResponse(
            {"status": "ok", "instance": self.ctx.instance_id},
            headers={"x-gateway-instance": self.ctx.instance_id},
        )

    async def readyz(self, request: Request) -> Response:
        ctx = self.ctx
        if ctx.draining:
            return JSONResponse(
                {"status": "draining", "instance": ctx.instance_id},
                status_code=503,
                headers={"x-gateway-instance": ctx.instance_id},
            )
        store_ok = await ctx.store.ping()
        body = {
            "status": "ready" if store_ok else "degraded",
            "instance": ctx.instance_id,
            "statestore": "ok" if store_ok else "unreachable",
        }
        return JSONResponse(body, headers={"x-gateway-instance": ctx.instance_id})

    async def admin_accounts(self, request: Request) -> Response:
        return await admin_accounts(self.ctx, request)

    async def metrics(self, request: Request) -> Response:
        self.ctx.refresh_gauges()
        body, content_type = self.ctx.metrics.render_exposition(request.headers.get("accept"))
        return Response(body, media_type=content_type)

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        await self.ctx.start()
        server_cfg = self.ctx.cfg.server
        signals = SignalDrain(
            lambda: self.drain(server_cfg.drain_timeout_s, server_cfg.drain_close_code)
        )
        signals.install()
        log.info(
            "gateway started",
            extra={
                "event": "startup",
                "worker": self.ctx.worker_id,
                **startup_summary(self.ctx.cfg),
            },
        )
        try:
            yield
        finally:
            signals.uninstall()
            await self.ctx.aclose()

    async def drain(self, timeout: float, close_code: int) -> None:
        """Refuse new sockets and turns, let turns finish, then close clients.

        Idle client sockets are closed at once, so clients reconnect (through the load
        balancer, to another instance) before their next turn; a socket with a turn in
        flight is closed right after its terminal event.
        """
        ctx = self.ctx
        if ctx.draining:
            return
        ctx.draining = True
        log.info("draining", extra={"event": "drain_start", "timeout_s": timeout})
        for session in list(ctx.registry.sessions):
            await session.begin_drain(close_code)
        finished = await ctx.registry.wait_idle(timeout)
        if not finished:
            log.warning(
                "drain timeout: closing sockets with turns still in flight",
                extra={"event": "drain_timeout", "turns": ctx.registry.turns_in_flight},
            )
        for session in list(ctx.registry.sessions):
            await session.close_for_drain(close_code)


def handshake_gate(cfg: Config) -> HandshakeGate:
    server = cfg.server
    return HandshakeGate(
        server.handshake_timeout_s, server.max_pending_handshakes, server.max_header_bytes
    )


def build_app(
    cfg: Config,
    *,
    span_exporter: SpanExporter | None = None,
    dialer: Dialer | None = None,
    http_transport: httpx.AsyncBaseTransport | None = None,
    gate: HandshakeGate | None = None,
) -> Starlette:
    """The app for a config; tests pass an in-memory span exporter and fake upstreams."""
    gateway = Gateway(
        cfg, span_exporter=span_exporter, dialer=dialer, http_transport=http_transport
    )
    routes: list[BaseRoute] = []
    for path in WS_PATHS:
        routes.append(WebSocketRoute(path, gateway.ws_endpoint))
        routes.append(Route(path, gateway.http_endpoint, methods=["POST"]))
    routes += [
        Route("/healthz", gateway.healthz),
        Route("/readyz", gateway.readyz),
        Route("/admin/accounts", gateway.admin_accounts),
    ]
    if cfg.telemetry.metrics_enabled:
        routes.append(Route("/metrics", gateway.metrics))
    guard = Middleware(HandshakeGuard, gate=gate or handshake_gate(cfg))
    app = Starlette(routes=routes, lifespan=gateway.lifespan, middleware=[guard])
    app.state.gateway = gateway
    return app


def create_app(config: Config | None = None) -> Starlette:
    """The uvicorn factory; reads GATEWAY_CONFIG when no config is given."""
    cfg = config or load_config()
    level = os.environ.get("GATEWAY_LOG_LEVEL") or cfg.telemetry.log_level
    setup_logging(level, cfg.telemetry.log_format)
    # The factory runs inside uvicorn before it listens, under our launcher and the
    # plain uvicorn command alike: the ingress limits are applied here, by the app.
    gate = install_ingress_guard(handshake_gate(cfg))
    return build_app(cfg, gate=gate)
