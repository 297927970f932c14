"""HTTP fallback: the same request over POST /v1/responses, SSE relayed as WS frames.

The client cannot tell: each SSE ``data:`` payload is exactly the event JSON the
WebSocket transport would have sent.
"""

from __future__ import annotations

import logging
import secrets
import time

import httpx
import msgspec

from gateway.config import Account
from gateway.context import GatewayContext
from gateway.events import (
    account_error_message,
    error_event,
    is_account_error,
    sanitize_upstream_error,
    transport_error_message,
)
from gateway.session import ClientSink
from gateway.turn import TurnTracker
from gateway.upstream.http import HttpUpstreamError, iter_sse_data, open_stream
from normalizer import to_http_body
from normalizer.snapshot import RequestSnapshot

_HOP_HEADERS = {"openai-beta"}
log = logging.getLogger("gateway.http_fallback")


class HttpTurnFailed(Exception):
    def __init__(
        self, status: int, code: str, message: str, error_type: str = "server_error"
    ) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.error_type = error_type
        super().__init__(message)


class _UpstreamErrorBody(msgspec.Struct):
    class _Err(msgspec.Struct):
        message: str = ""
        type: str = "upstream_error"
        code: str | None = None

    error: _Err | None = None


def http_headers(account: Account, forwarded: tuple[tuple[str, str], ...]) -> list[tuple[str, str]]:
    headers = [
        ("authorization", f"Bearer {account.api_key}"),
        ("content-type", "application/json"),
        ("accept", "text/event-stream"),
    ]
    headers.extend((k, v) for k, v in forwarded if k not in _HOP_HEADERS)
    headers.extend((k.lower(), v) for k, v in account.extra_headers.items())
    return headers


async def run_http_turn(
    ctx: GatewayContext,
    account: Account,
    request: RequestSnapshot,
    sink: ClientSink,
    forwarded: tuple[tuple[str, str], ...],
) -> TurnTracker:
    body = to_http_body(request)
    url = account.base_url.rstrip("/") + "/responses"
    client = ctx.http.get(account.proxy_url)
    tracker = TurnTracker()
    try:
        async with open_stream(client, url, body, http_headers(account, forwarded)) as response:
            async for data in iter_sse_data(response.aiter_lines()):
                etype = tracker.observe(data)
                await sink.send(
                    sanitize_upstream_error(data, etype, account.id) if tracker.done else data
                )
                if tracker.done:
                    break
    except HttpUpstreamError as exc:
        raise _refused(exc, account) from None
    except httpx.HTTPError as exc:
        log.warning(
            "HTTP upstream transport failed",
            extra={"event": "upstream_http_failed", "account": account.id, "error": repr(exc)},
        )
        raise HttpTurnFailed(
            502, "upstream_unavailable", transport_error_message("HTTP upstream")
        ) from None
    if not tracker.done and tracker.events:
        await sink.send(
            error_event(
                502,
                "upstream_stream_interrupted",
                "HTTP upstream stream ended early",
                error_type="server_error",
            )
        )
    elif not tracker.done:
        raise HttpTurnFailed(502, "upstream_empty_stream", "HTTP upstream returned no events")
    return tracker


def _refused(exc: HttpUpstreamError, account: Account) -> HttpTurnFailed:
    """The client's error for an upstream refusal; an account error never quotes the
    upstream (its words may carry the key): those go to the log only."""
    try:
        parsed = msgspec.json.decode(exc.body, type=_UpstreamErrorBody).error
    except (msgspec.MsgspecError, RecursionError):
        parsed = None
    code = parsed.code if parsed and parsed.code else None
    if is_account_error(exc.status, code):
        log.warning(
            "upstream refused the account over HTTP",
            extra={"event": "upstream_account_error", "account": account.id, "status": exc.status},
        )
        message = account_error_message(account.id, exc.status, code)
        return HttpTurnFailed(502, "upstream_account_error", message)
    message = (
        parsed.message if parsed and parsed.message else exc.body[:300].decode("utf-8", "replace")
    )
    error_type = parsed.type if parsed else "upstream_error"
    return HttpTurnFailed(exc.status, code or f"upstream_http_{exc.status}", message, error_type)


async def synthesize_warmup(request: RequestSnapshot, sink: ClientSink) -> TurnTracker:
    """Answer ``generate: false`` (a warm-up) locally when the upstream is HTTP-only."""
    response_id = f"resp_gw{secrets.token_hex(12)}"
    created_at = int(time.time())
    base: dict[str, object] = {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "model": request.model or "",
        "output": [],
    }
    created = {
        "type": "response.created",
        "sequence_number": 0,
        "response": {**base, "status": "in_progress"},
    }
    usage = {
        "input_tokens": 0,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 0,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 0,
    }
    completed = {
        "type": "response.completed",
        "sequence_number": 1,
        "response": {**base, "status": "completed", "usage": usage},
    }
    tracker = TurnTracker()
    for event in (created, completed):
        frame = msgspec.json.encode(event).decode()
        tracker.observe(frame)
        await sink.send(frame)
    return tracker
