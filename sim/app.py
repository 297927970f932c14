"""A protocol-faithful stand-in for the OpenAI Responses API (WebSocket + HTTP/SSE).

Rules it enforces like the real API: one response in flight per
socket; a ``previous_response_id`` resolves to the socket's latest response whatever
``store`` was, or to a persisted (``store: true``) response of the same account on any
socket or over HTTP, else ``previous_response_not_found``; every tool call needs exactly
one output and every output a call; a failed request evicts the socket's cached response.
Fault rules (``POST /__sim/faults``) inject the failures peers hit in production, and
``GET /__sim/log`` tells tests exactly what arrived. What the model answers is scripted by
``[[sim ...]]`` directives in the last user message (see sim/model.py).

In-process use::

    app = create_sim_app(SimConfig(keys=("sk-sim-a",), timestamps=False))
    # uvicorn.Config(app, ws="websockets-sansio", ws_max_size=16 * 1024 * 1024, ...)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from sim import control_api
from sim.core import SimConfig, SimCore
from sim.http import http_endpoint
from sim.ws import websocket_endpoint

__all__ = ["SimConfig", "SimCore", "create_sim_app"]

RESPONSE_PATHS = ("/v1/responses", "/backend-api/codex/responses")


def _http(
    core: SimCore, handler: Callable[[SimCore, Request], Awaitable[Response]]
) -> Callable[[Request], Awaitable[Response]]:
    return partial(handler, core)


class TransportTap:
    """Hands the WebSocket endpoint its TCP transport (as ``scope["sim.transport"]``).

    uvicorn's raw ``send`` is a bound method of the protocol that owns the transport;
    inner layers wrap ``send``, so it is read here, outside them.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            owner = getattr(send, "__self__", None)
            scope = {**scope, "sim.transport": getattr(owner, "transport", None)}
        await self.app(scope, receive, send)


def create_sim_app(config: SimConfig | None = None) -> Starlette:
    core = SimCore(config or SimConfig())

    async def ws_route(ws: WebSocket) -> None:
        await websocket_endpoint(core, ws)

    routes: list[Route | WebSocketRoute] = []
    for path in RESPONSE_PATHS:
        routes.append(WebSocketRoute(path, ws_route))
        routes.append(Route(path, _http(core, http_endpoint), methods=["POST"]))
    routes += [
        Route("/__sim/reset", _http(core, control_api.reset), methods=["POST"]),
        Route("/__sim/faults", _http(core, control_api.faults), methods=["GET", "POST", "DELETE"]),
        Route("/__sim/faults/{rule_id}", _http(core, control_api.faults), methods=["DELETE"]),
        Route("/__sim/log", _http(core, control_api.log), methods=["GET"]),
        Route("/__sim/drop", _http(core, control_api.drop), methods=["POST"]),
        Route("/__sim/healthz", _http(core, control_api.healthz), methods=["GET"]),
    ]
    app = Starlette(routes=routes, middleware=[Middleware(TransportTap)])
    app.state.sim = core
    return app
