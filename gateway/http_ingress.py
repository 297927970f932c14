"""POST /v1/responses: clients that fell back to HTTP keep working (SSE or JSON)."""

from __future__ import annotations

import logging
import time

import httpx
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from gateway.context import GatewayContext
from gateway.events import (
    account_error_message,
    error_json,
    is_account_error,
    transport_error_message,
)
from gateway.forward.http_fallback import http_headers
from gateway.logs import log_fields, log_http_request
from gateway.upstream.headers import forwarded_headers, session_key

log = logging.getLogger("gateway.http_ingress")

_PASS_RESPONSE_HEADERS = (
    "content-type",
    "x-request-id",
    "openai-model",
    "retry-after",
    "x-codex-turn-state",
)


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
    account = ctx.pick_account(identity.group, prefer_ws=False)
    if account is None:
        return _error(503, "no_account", "no upstream account for this key's group", "server_error")
    request.state.account = account.id
    client = ctx.http.get(account.proxy_url)
    fwd = tuple(forwarded_headers(headers))
    upstream_headers = http_headers(account, fwd)
    upstream_headers = [(k, v) for k, v in upstream_headers if k != "accept"] + [
        ("accept", headers.get("accept", "*/*"))
    ]
    url = account.base_url.rstrip("/") + "/responses"
    try:
        upstream = await client.send(
            client.build_request("POST", url, content=body, headers=upstream_headers), stream=True
        )
    except httpx.HTTPError as exc:
        log.warning(
            "HTTP upstream transport failed",
            extra={"event": "upstream_http_failed", "account": account.id, "error": repr(exc)},
        )
        return _error(
            502, "upstream_unavailable", transport_error_message("HTTP upstream"), "server_error"
        )
    if is_account_error(upstream.status_code, None):
        # The upstream's body may quote the account key: it goes to the log, not the client.
        body = await upstream.aread()
        await upstream.aclose()
        log.warning(
            "upstream refused the account over HTTP",
            extra={
                "event": "upstream_account_error",
                "account": account.id,
                "status": upstream.status_code,
                "body": body[:200].decode("utf-8", "replace"),
            },
        )
        return _error(
            502,
            "upstream_account_error",
            account_error_message(account.id, upstream.status_code, None),
            "server_error",
        )
    out_headers = {k: upstream.headers[k] for k in _PASS_RESPONSE_HEADERS if k in upstream.headers}
    out_headers["x-gateway-instance"] = ctx.instance_id
    ctx.metrics.http_requests.inc()
    return StreamingResponse(
        upstream.aiter_raw(),
        status_code=upstream.status_code,
        headers=out_headers,
        background=BackgroundTask(upstream.aclose),
    )
