"""More of the ctx_pool turn in-process: the turn-state token, requests refused before any
dial, turns served over HTTP because the account is HTTP-only, a client gone before the
turn could be retried, an account the upstream refuses, and a full pool."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import httpx
import pytest
from starlette.websockets import WebSocket

from gateway.auth import ClientIdentity
from gateway.config import Config, parse_config
from gateway.context import GatewayContext
from gateway.forward.ctx_pool import CtxPoolForwarder
from gateway.session import ClientSink
from statestore import TurnBinding
from tests.gateway.fake_upstream import FakeDialer, FakeUpstream, error_frame
from tests.gateway.test_ctx_pool import ClientSocket, create, types, user
from tests.support import toml_dumps

Http = Callable[[httpx.Request], httpx.Response]
IDENTITY = ClientIdentity(group="default", name="client-0", key_id="k0")


def config(accounts: int = 1, max_conns: int = 128, **openai_ws: object) -> Config:
    doc: dict[str, object] = {
        "clients": [{"key": "sk-client", "group": "default"}],
        "accounts": [
            {
                "id": f"acct-{i}",
                "api_key": f"sk-{i}",
                "base_url": "http://upstream.test/v1",
                "max_conns": max_conns,
            }
            for i in range(accounts)
        ],
        "openai_ws": {"retry_backoff_initial_ms": 0, **openai_ws},
    }
    return parse_config(toml_dumps(doc))


def sse_answer(rid: str = "resp_http") -> httpx.Response:
    frames = (
        {"type": "response.created", "response": {"id": rid}},
        {"type": "response.completed", "response": {"id": rid, "status": "completed"}},
    )
    body = "".join(f"data: {json.dumps(f)}\n\n" for f in frames)
    return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})


class Rig:
    def __init__(self, ctx: GatewayContext, dialer: FakeDialer, posted: list[Any]) -> None:
        self.ctx = ctx
        self.dialer = dialer
        self.upstream = dialer.upstream
        self.posted = posted
        self.client = ClientSocket()
        self.sink = ClientSink(cast(WebSocket, self.client))

    def forwarder(
        self, headers: dict[str, str] | None = None, session_key: str | None = None
    ) -> CtxPoolForwarder:
        return CtxPoolForwarder(self.ctx, IDENTITY, headers or {}, session_key)

    def metric(self, name: str, **labels: str) -> float:
        value = self.ctx.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


@pytest.fixture
async def rig_factory() -> AsyncIterator[Callable[..., Rig]]:
    contexts: list[GatewayContext] = []

    def build(cfg: Config | None = None, http: Http | None = None) -> Rig:
        dialer = FakeDialer(FakeUpstream())
        posted: list[Any] = []

        def record(request: httpx.Request) -> httpx.Response:
            posted.append(json.loads(request.content))
            return (http or (lambda _r: sse_answer()))(request)

        transport = httpx.MockTransport(record)
        ctx = GatewayContext(cfg or config(), dialer=dialer, http_transport=transport)
        contexts.append(ctx)
        return Rig(ctx, dialer, posted)

    yield build
    for ctx in contexts:
        await ctx.aclose()


async def test_the_turn_state_is_the_client_one_else_the_session_one_else_minted(
    rig_factory: Callable[..., Rig],
) -> None:
    rig = rig_factory()
    echoed = rig.forwarder({"x-codex-turn-state": "ts_client"}, session_key="s1")
    assert await echoed.handshake_turn_state() == "ts_client"
    binding = TurnBinding(
        group="default", account_id="acct-0", response_id="r1", session_key="s1", turn_state="ts_s"
    )
    await rig.ctx.store.bind_turn(binding)
    assert await rig.forwarder(session_key="s1").handshake_turn_state() == "ts_s"
    minted = rig.forwarder(session_key="s2")
    token = await minted.handshake_turn_state()
    assert token is not None and token.startswith("ts_") and token != "ts_s"
    assert await minted.handshake_turn_state() == token  # one token for the socket's life


async def test_a_frame_that_is_not_response_create_is_refused_without_dialling(
    rig_factory: Callable[..., Rig],
) -> None:
    rig = rig_factory()
    fwd = rig.forwarder()
    await fwd.run_turn(json.dumps({"type": "response.cancel"}), rig.sink)
    await fwd.on_other_frame('{"type": "session.update"}', "session.update", rig.sink)
    first, second = rig.client.turn()
    assert first["error"]["code"] == second["error"]["code"] == "unsupported_message_type"
    assert "'response.cancel'" in first["error"]["message"]
    assert "'session.update'" in second["error"]["message"]
    assert rig.upstream.sockets == []


async def test_a_request_without_a_model_is_still_served(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory()
    body = json.loads(create())
    del body["model"]
    await rig.forwarder().run_turn(json.dumps(body), rig.sink)
    assert types(rig.client.turn())[-1] == "response.completed"
    assert "model" not in rig.upstream.requests[0]


async def test_an_http_only_account_serves_the_turn_over_http(
    rig_factory: Callable[..., Rig],
) -> None:
    rig = rig_factory(config(force_http=True))
    fwd = rig.forwarder()
    await fwd.run_turn(create(), rig.sink)
    assert types(rig.client.turn()) == ["response.created", "response.completed"]
    assert rig.upstream.sockets == [] and len(rig.posted) == 1
    assert rig.metric("gateway_http_fallbacks_total", reason="global_force_http") == 1
    assert rig.metric("gateway_turns_total", mode="ctx_pool", outcome="http_completed") == 1
    # The next turn continues from the transcript: the whole conversation goes over HTTP.
    await fwd.run_turn(create([user("next")], previous_response_id="resp_http"), rig.sink)
    assert types(rig.client.turn())[-1] == "response.completed"
    assert "previous_response_id" not in rig.posted[1]
    assert "next" in json.dumps(rig.posted[1]["input"])


async def test_a_warmup_on_an_http_only_account_is_answered_locally(
    rig_factory: Callable[..., Rig],
) -> None:
    rig = rig_factory(config(force_http=True))
    await rig.forwarder().run_turn(create(generate=False), rig.sink)
    assert types(rig.client.turn()) == ["response.created", "response.completed"]
    assert rig.posted == []


async def test_an_unknown_store_false_continuation_over_http_asks_for_a_replay(
    rig_factory: Callable[..., Rig],
) -> None:
    rig = rig_factory(config(force_http=True))
    await rig.forwarder().run_turn(create(previous_response_id="resp_elsewhere"), rig.sink)
    [error] = rig.client.turn()
    assert error["error"]["code"] == "previous_response_not_found"
    assert rig.posted == []


async def test_a_stored_continuation_unknown_here_is_still_sent_over_http(
    rig_factory: Callable[..., Rig],
) -> None:
    rig = rig_factory(config(force_http=True))
    frame = create([user("again")], previous_response_id="resp_stored", store=True)
    await rig.forwarder().run_turn(frame, rig.sink)
    assert types(rig.client.turn())[-1] == "response.completed"
    assert len(rig.posted) == 1 and "again" in json.dumps(rig.posted[0]["input"])
    # The upstream continues the stored response by id: the id goes with the POST.
    assert rig.posted[0]["previous_response_id"] == "resp_stored"


async def test_an_http_upstream_error_is_one_error_event(rig_factory: Callable[..., Rig]) -> None:
    def refuse(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"error": {"message": "bad", "code": "bad_thing"}})

    rig = rig_factory(config(force_http=True), http=refuse)
    await rig.forwarder().run_turn(create(), rig.sink)
    [error] = rig.client.turn()
    assert error["status"] == 400 and error["error"]["code"] == "bad_thing"
    assert rig.metric("gateway_turns_total", mode="ctx_pool", outcome="http_error") == 1


async def test_an_error_event_over_http_binds_nothing(rig_factory: Callable[..., Rig]) -> None:
    def error_stream(_request: httpx.Request) -> httpx.Response:
        error = {"type": "error", "status": 500, "error": {"code": "server_error", "message": "x"}}
        body = f"data: {json.dumps(error)}\n\n"
        return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})

    rig = rig_factory(config(force_http=True), http=error_stream)
    fwd = rig.forwarder()
    await fwd.run_turn(create(), rig.sink)
    assert types(rig.client.turn()) == ["error"]
    assert fwd.state.response_id is None


async def test_a_client_gone_before_a_retry_ends_the_turn_quietly(
    rig_factory: Callable[..., Rig],
) -> None:
    rig = rig_factory()
    rig.upstream.refuse_dials(503, times=3)
    rig.sink.gone = True  # the client socket closed while the turn was being set up
    await rig.forwarder().run_turn(create(), rig.sink)
    assert len(rig.upstream.dial_failures) == 2  # one dial, no retries
    assert rig.metric("gateway_turns_total", mode="ctx_pool", outcome="client_gone") == 1


async def test_an_account_the_upstream_refuses_hands_the_turn_to_another(
    rig_factory: Callable[..., Rig],
) -> None:
    rig = rig_factory(config(accounts=2))
    rig.upstream.fail_next(error_frame(401, "Incorrect API key provided: sk-0", "invalid_api_key"))
    fwd = rig.forwarder()
    await fwd.run_turn(create(), rig.sink)
    frames = rig.client.turn()
    assert types(frames)[-1] == "response.completed" and "sk-0" not in json.dumps(frames)
    refused, served = rig.dialer.dials
    assert refused != served and fwd.state.account_id == served
    assert rig.metric("gateway_account_failovers_total", reason="account_refused") == 1


async def test_a_full_pool_is_a_clear_503(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory(config(max_conns=1, acquire_timeout_s=0.01, retry_max_attempts=1))
    held = await rig.ctx.pools.pool("acct-0").acquire()
    await rig.forwarder().run_turn(create(), rig.sink)
    [error] = rig.client.turn()
    assert error["status"] == 503 and error["error"]["code"] == "pool_exhausted"
    held.release(broken=False)
