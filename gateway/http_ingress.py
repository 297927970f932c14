"""POST /v1/responses: authentication and limits here; the turn itself is an HttpTurn."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import Response

from gateway.context import GatewayContext
from gateway.events import error_json
from gateway.forward.http_turn import HttpTurn
from gateway.logs import log_fields, log_http_request
from gateway.upstream.headers import session_key
from normalizer import RequestDecodeError, decode_request


def _error(status: int, code: str, message: str, error_type: str) -> Response:
    return Response(
        error_json(status, code, message, error_type),
        status_code=status,
        media_type="application/json",
    )


async def http_responses(ctx: GatewayContext, request: Request) -> Response:
    started = time.perf_counter()
    headers = {k.lower(): v for k, v in request.headers.items()}
    with log_fields(session=session_key(headers)):
        response = await _serve(ctx, request, headers)
        log_http_request(request, response, started)
    return response


async def _serve(ctx: GatewayContext, request: Request, headers: dict[str, str]) -> Response:
    identity = ctx.directory.authenticate(headers.get("authorization"))
    if identity is None:
        return _error(
            401,
            "invalid_api_key",
            "missing or unknown gateway key (Authorization: Bearer <key>)",
            "authentication_error",
        )
    if ctx.draining:
        return _error(503, "server_shutting_down", "this instance is draining", "server_error")
    body = await request.body()
    if len(body) > ctx.cfg.server.max_message_bytes:
        return _error(
            413,
            "request_too_large",
            f"request body over {ctx.cfg.server.max_message_bytes} bytes",
            "invalid_request_error",
        )
    try:
        snapshot = decode_request(body)
    except RequestDecodeError as exc:
        return _error(400, "invalid_request", str(exc), "invalid_request_error")
    ctx.metrics.http_requests.inc()
    turn = HttpTurn(ctx, identity, headers, snapshot)
    response = await turn.respond()
    if turn.account is not None:
        request.state.account = turn.account.id
    request.state.relayed = turn.relayed
    return response
