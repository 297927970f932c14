"""The HTTP fallback in-process: ``run_http_turn`` against an httpx MockTransport, the SSE
answer relayed to the client as the frames the WebSocket transport would have sent, and
every way the HTTP upstream can fail turned into one ``HttpTurnFailed``."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import httpx
import pytest
from starlette.websockets import WebSocket

from gateway.config import Config, parse_config
from gateway.context import GatewayContext
from gateway.forward.http_fallback import (
    HttpTurnFailed,
    http_headers,
    run_http_turn,
    synthesize_warmup,
)
from gateway.session import ClientSink
from gateway.turn import TurnOutcome, TurnTracker
from normalizer import decode_request
from tests.gateway.test_ctx_pool import ClientSocket, create
from tests.support import toml_dumps

KEY = "sk-upstream-secret"
Handler = Callable[[httpx.Request], httpx.Response]


def config() -> Config:
    account = {
        "id": "acct-0",
        "api_key": KEY,
        "base_url": "http://upstream.test/v1/",
        "extra_headers": {"X-Org": "org-1"},
    }
    doc = {"clients": [{"key": "sk-client", "group": "default"}], "accounts": [account]}
    return parse_config(toml_dumps(doc))


def sse(*events: dict[str, Any] | str) -> bytes:
    lines = (e if isinstance(e, str) else json.dumps(e) for e in events)
    return b"".join(b"event: x\ndata: " + line.encode() + b"\n\n" for line in lines)


def stream(body: bytes, status: int = 200) -> httpx.Response:
    return httpx.Response(
        status, stream=httpx.ByteStream(body), headers={"content-type": "text/event-stream"}
    )


CREATED = {"type": "response.created", "response": {"id": "resp_1", "model": "m"}}
DELTA = {"type": "response.output_text.delta", "delta": "hi"}
COMPLETED = {
    "type": "response.completed",
    "response": {"id": "resp_1", "status": "completed", "output": [], "usage": {}},
}


class Turn:
    """One HTTP turn against a scripted transport; what the upstream saw and the client got."""

    def __init__(self, ctx: GatewayContext, requests: list[httpx.Request]) -> None:
        self.ctx = ctx
        self.requests = requests
        self.client = ClientSocket()
        self.sink = ClientSink(cast(WebSocket, self.client))

    async def run(
        self, frame: str | None = None, forwarded: tuple[tuple[str, str], ...] = ()
    ) -> TurnTracker:
        request = decode_request(frame or create())
        account = self.ctx.accounts["acct-0"]
        return await run_http_turn(self.ctx, account, request, self.sink, forwarded)


@pytest.fixture
async def turn_factory() -> AsyncIterator[Callable[[Handler], Turn]]:
    contexts: list[GatewayContext] = []

    def build(handler: Handler) -> Turn:
        requests: list[httpx.Request] = []

        def record(request: httpx.Request) -> httpx.Response:
            requests.append(request)
            return handler(request)

        ctx = GatewayContext(config(), http_transport=httpx.MockTransport(record))
        contexts.append(ctx)
        return Turn(ctx, requests)

    yield build
    for ctx in contexts:
        await ctx.aclose()


async def test_sse_events_are_relayed_as_frames(turn_factory: Callable[[Handler], Turn]) -> None:
    turn = turn_factory(lambda _r: stream(sse(CREATED, DELTA, COMPLETED)))
    tracker = await turn.run()
    assert turn.client.turn() == [CREATED, DELTA, COMPLETED]
    assert tracker.outcome is TurnOutcome.COMPLETED
    assert tracker.response_id == "resp_1"


async def test_the_request_goes_to_responses_with_the_account_key_and_stream_on(
    turn_factory: Callable[[Handler], Turn],
) -> None:
    turn = turn_factory(lambda _r: stream(sse(CREATED, COMPLETED)))
    await turn.run(forwarded=(("openai-beta", "responses_websockets=1"), ("x-client", "c")))
    [sent] = turn.requests
    assert str(sent.url) == "http://upstream.test/v1/responses"
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.headers["accept"] == "text/event-stream"
    assert sent.headers["x-client"] == "c" and sent.headers["x-org"] == "org-1"
    assert "openai-beta" not in sent.headers
    body = json.loads(sent.content)
    assert body["stream"] is True and "type" not in body


def test_http_headers_drop_the_websocket_beta_header() -> None:
    account = config().accounts[0]
    headers = http_headers(account, (("openai-beta", "x"), ("session_id", "s")))
    assert ("session_id", "s") in headers and ("x-org", "org-1") in headers
    assert all(name != "openai-beta" for name, _ in headers)


async def test_nothing_after_the_terminal_event_is_relayed(
    turn_factory: Callable[[Handler], Turn],
) -> None:
    turn = turn_factory(lambda _r: stream(sse(CREATED, COMPLETED, DELTA)))
    await turn.run()
    assert turn.client.turn() == [CREATED, COMPLETED]


async def test_an_error_event_on_the_stream_is_relayed_sanitised(
    turn_factory: Callable[[Handler], Turn],
) -> None:
    error = {
        "type": "error",
        "status": 401,
        "error": {"code": "invalid_api_key", "message": f"Incorrect API key {KEY}"},
    }
    turn = turn_factory(lambda _r: stream(sse(CREATED, error)))
    tracker = await turn.run()
    frames = turn.client.turn()
    assert frames[0] == CREATED
    assert frames[1]["error"]["code"] == "upstream_account_error"
    assert KEY not in json.dumps(frames)
    assert tracker.outcome is TurnOutcome.ERROR


@pytest.mark.parametrize(
    ("status", "body", "code", "message", "error_type"),
    [
        (
            400,
            {"error": {"message": "bad model", "type": "invalid_request_error", "code": "bad"}},
            "bad",
            "bad model",
            "invalid_request_error",
        ),
        (
            500,
            {"error": {"message": "", "type": "server_error"}},
            "upstream_http_500",
            '{"error": {"message": "", "type": "server_error"}}',
            "server_error",
        ),
        (503, "gateway timeout", "upstream_http_503", "gateway timeout", "upstream_error"),
    ],
)
async def test_an_upstream_http_error_becomes_http_turn_failed(
    turn_factory: Callable[[Handler], Turn],
    status: int,
    body: dict[str, Any] | str,
    code: str,
    message: str,
    error_type: str,
) -> None:
    content = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    turn = turn_factory(lambda _r: httpx.Response(status, content=content))
    with pytest.raises(HttpTurnFailed) as failed:
        await turn.run()
    assert (failed.value.status, failed.value.code) == (status, code)
    assert failed.value.message == message
    assert failed.value.error_type == error_type
    assert turn.client.turn() == []


@pytest.mark.parametrize(("status", "code"), [(401, None), (403, "invalid_api_key")])
async def test_an_account_error_is_sanitised(
    turn_factory: Callable[[Handler], Turn], status: int, code: str | None
) -> None:
    body = {"error": {"message": f"Incorrect API key provided: {KEY}", "code": code}}
    turn = turn_factory(lambda _r: httpx.Response(status, json=body))
    with pytest.raises(HttpTurnFailed) as failed:
        await turn.run()
    assert failed.value.status == 502
    assert failed.value.code == "upstream_account_error"
    assert KEY not in failed.value.message and "acct-0" in failed.value.message


async def test_a_transport_error_is_upstream_unavailable(
    turn_factory: Callable[[Handler], Turn],
) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    turn = turn_factory(refuse)
    with pytest.raises(HttpTurnFailed) as failed:
        await turn.run()
    assert (failed.value.status, failed.value.code) == (502, "upstream_unavailable")
    assert "refused" not in failed.value.message


async def test_a_stream_that_ends_early_tells_the_client(
    turn_factory: Callable[[Handler], Turn],
) -> None:
    turn = turn_factory(lambda _r: stream(sse(CREATED, DELTA)))
    tracker = await turn.run()
    frames = turn.client.turn()
    assert frames[:2] == [CREATED, DELTA]
    assert frames[2]["error"]["code"] == "upstream_stream_interrupted"
    assert not tracker.done


async def test_an_empty_stream_fails_the_turn_before_any_frame(
    turn_factory: Callable[[Handler], Turn],
) -> None:
    turn = turn_factory(lambda _r: stream(b": keep-alive\n\n"))
    with pytest.raises(HttpTurnFailed) as failed:
        await turn.run()
    assert failed.value.code == "upstream_empty_stream"
    assert turn.client.turn() == []


async def test_a_warmup_is_answered_locally() -> None:
    client = ClientSocket()
    sink = ClientSink(cast(WebSocket, client))
    request = decode_request(create(generate=False, model="gpt-x"))
    tracker = await synthesize_warmup(request, sink)
    created, completed = client.turn()
    assert created["type"] == "response.created"
    assert created["response"]["status"] == "in_progress"
    assert completed["type"] == "response.completed"
    assert completed["response"]["id"] == created["response"]["id"]
    assert completed["response"]["id"].startswith("resp_")
    assert completed["response"]["model"] == "gpt-x"
    assert completed["response"]["usage"]["total_tokens"] == 0
    assert tracker.outcome is TurnOutcome.COMPLETED
    assert tracker.response_id == completed["response"]["id"]
