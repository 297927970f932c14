"""The passthrough forwarder in-process: a real GatewayContext in passthrough mode with the
fake upstream dialer injected. One upstream socket per client socket, dialled on the
client's first frame, frames relayed verbatim, the upstream's close passed on."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.websockets import WebSocket

from gateway.config import Config, parse_config
from gateway.context import GatewayContext
from gateway.forward.passthrough import PassthroughForwarder, dial_failure_event
from gateway.session import ClientSink
from gateway.upstream.ws import DialError, HandshakeRejected, UpstreamError
from pool import DialFailed, PoolExhausted
from tests.gateway.fake_upstream import (
    Close,
    FakeDialer,
    FakeSocket,
    FakeUpstream,
    Silence,
    error_frame,
)
from tests.gateway.test_ctx_pool import ClientSocket, create
from tests.support import toml_dumps

HEADERS = {"x-codex-turn-state": "ts_client", "openai-beta": "responses_websockets=2026-02-06"}


def config(max_conns: int = 128, **openai_ws: object) -> Config:
    doc: dict[str, object] = {
        "clients": [{"key": "sk-client", "group": "default"}],
        "accounts": [
            {"id": "acct-0", "api_key": "sk-0", "base_url": "http://upstream.test/v1"}
            | {"max_conns": max_conns}
        ],
        "openai_ws": {"mode": "passthrough", **openai_ws},
    }
    return parse_config(toml_dumps(doc))


class Rig:
    def __init__(self, ctx: GatewayContext, upstream: FakeUpstream, dialer: FakeDialer) -> None:
        self.ctx = ctx
        self.upstream = upstream
        self.dialer = dialer
        self.client = ClientSocket()
        self.sink = ClientSink(cast(WebSocket, self.client))
        self.fwd = PassthroughForwarder(ctx, ctx.accounts["acct-0"], HEADERS)

    def metric(self, name: str, **labels: str) -> float:
        value = self.ctx.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    def turns(self, outcome: str) -> float:
        return self.metric("gateway_turns_total", mode="passthrough", outcome=outcome)

    @property
    def socket(self) -> FakeSocket:
        return self.upstream.sockets[-1]


@pytest.fixture
async def rig_factory() -> AsyncIterator[Callable[..., Rig]]:
    rigs: list[Rig] = []

    def build(
        exporter: InMemorySpanExporter | None = None,
        dialer: FakeDialer | None = None,
        max_conns: int = 128,
        **ws: Any,
    ) -> Rig:
        upstream = dialer.upstream if dialer is not None else FakeUpstream()
        dialer = dialer or FakeDialer(upstream)
        ctx = GatewayContext(config(max_conns, **ws), dialer=dialer, span_exporter=exporter)
        rig = Rig(ctx, upstream, dialer)
        rigs.append(rig)
        return rig

    yield build
    for rig in rigs:
        await rig.fwd.aclose()
        await rig.ctx.aclose()


def types(frames: list[dict[str, Any]]) -> list[str]:
    return [f["type"] for f in frames]


async def test_the_upstream_is_dialled_on_the_first_frame_not_before(
    rig_factory: Callable[..., Rig],
) -> None:
    rig = rig_factory()
    assert rig.dialer.dials == []
    assert rig.ctx.active["acct-0"] == 1
    await rig.fwd.run_turn(create(), rig.sink)
    assert rig.dialer.dials == ["acct-0"]
    assert types(rig.client.turn()) == [
        "response.created",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.completed",
    ]
    assert rig.turns("completed") == 1
    assert rig.metric("gateway_relayed_events_total", mode="passthrough") == 4


async def test_frames_go_upstream_verbatim_on_one_socket_for_the_client_life(
    rig_factory: Callable[..., Rig],
) -> None:
    rig = rig_factory()
    frame = create(metadata={"k": "v"})
    await rig.fwd.run_turn(frame, rig.sink)
    first = rig.client.turn()
    again = create(previous_response_id=first[-1]["response"]["id"])
    await rig.fwd.run_turn(again, rig.sink)
    assert types(rig.client.turn())[-1] == "response.completed"
    assert rig.upstream.requests == [json.loads(frame), json.loads(again)]
    assert len(rig.dialer.dials) == 1
    assert rig.ctx.pools.stats()["acct-0"].leased == 1


async def test_the_client_turn_state_goes_upstream_else_one_is_minted(
    rig_factory: Callable[..., Rig],
) -> None:
    rig = rig_factory()
    assert dict(rig.fwd.fwd_headers)["x-codex-turn-state"] == "ts_client"
    minted = PassthroughForwarder(rig.ctx, rig.ctx.accounts["acct-0"], {})
    assert minted.turn_state.startswith("ts_") and minted.turn_state != "ts_client"
    await minted.aclose()


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        ("[1, 2]", "message must be a JSON object"),
        ("{x", "malformed JSON"),
        ('{"a":' * 100_000 + "1" + "}" * 100_000, "JSON nesting is too deep"),
    ],
)
async def test_an_undecodable_frame_is_refused_without_dialling(
    rig_factory: Callable[..., Rig], frame: str, reason: str
) -> None:
    rig = rig_factory()
    await rig.fwd.run_turn(frame, rig.sink)
    [answer] = rig.client.turn()
    assert answer["error"]["code"] == "invalid_json"
    assert answer["error"]["message"].startswith(reason)
    assert rig.dialer.dials == []


@pytest.mark.parametrize(("code", "client_code"), [(4000, 4000), (1006, 1011), (1000, 1000)])
async def test_an_upstream_close_closes_the_client_with_its_code(
    rig_factory: Callable[..., Rig], code: int, client_code: int
) -> None:
    rig = rig_factory()
    rig.upstream.fail_next(Close(code))
    await rig.fwd.run_turn(create(), rig.sink)
    assert rig.client.closed == client_code
    assert rig.sink.closed_code == client_code
    assert rig.turns("upstream_lost") == 1
    await rig.fwd.aclose()
    stats = rig.ctx.pools.stats()["acct-0"]
    assert stats.leased == 0 and stats.idle == 0  # a closed socket is not pooled


async def test_a_silent_upstream_is_lost_after_the_read_timeout(
    rig_factory: Callable[..., Rig],
) -> None:
    rig = rig_factory(read_timeout_s=0.01)
    rig.upstream.fail_next(Silence())
    await rig.fwd.run_turn(create(), rig.sink)
    assert rig.client.closed == 1011
    assert rig.fwd.broken
    assert rig.turns("upstream_lost") == 1


async def test_an_upstream_failure_mid_turn_closes_the_client(
    rig_factory: Callable[..., Rig],
) -> None:
    rig = rig_factory()
    await rig.fwd.run_turn(create(), rig.sink)
    rig.client.turn()

    async def broken_recv(timeout: float | None = None) -> str:
        raise UpstreamError("frame too big")

    rig.socket.recv = broken_recv  # type: ignore[method-assign]
    await rig.fwd.run_turn(create(), rig.sink)
    assert rig.client.closed == 1011
    assert rig.turns("upstream_lost") == 1


async def test_a_socket_that_died_between_turns_closes_the_client(
    rig_factory: Callable[..., Rig],
) -> None:
    rig = rig_factory()
    await rig.fwd.run_turn(create(), rig.sink)
    rig.client.turn()
    await rig.socket.aclose(4001, "idle too long")
    await rig.fwd.run_turn(create(), rig.sink)
    assert rig.client.closed == 4001
    assert len(rig.upstream.requests) == 1  # nothing was sent on the dead socket


async def test_an_error_event_retires_the_socket_but_keeps_the_client(
    rig_factory: Callable[..., Rig],
) -> None:
    rig = rig_factory()
    rig.upstream.fail_next(error_frame(500, "server had an error", "server_error"))
    await rig.fwd.run_turn(create(), rig.sink)
    [err] = rig.client.turn()
    assert err["type"] == "error"
    assert rig.client.closed is None
    assert rig.turns("error") == 1
    first = rig.socket
    await rig.fwd.run_turn(create(), rig.sink)
    assert types(rig.client.turn())[-1] == "response.completed"
    assert len(rig.dialer.dials) == 2 and rig.socket is not first
    assert rig.ctx.pools.stats()["acct-0"].leased == 1


async def test_an_account_error_event_is_sanitised(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory()
    rig.upstream.fail_next(error_frame(401, "Incorrect API key provided: sk-0", "invalid_api_key"))
    await rig.fwd.run_turn(create(), rig.sink)
    [err] = rig.client.turn()
    assert "sk-0" not in json.dumps(err)
    assert err["error"]["code"] == "upstream_account_error"


async def test_a_client_gone_mid_turn_drains_and_the_socket_is_pooled(
    rig_factory: Callable[..., Rig],
) -> None:
    rig = rig_factory()
    rig.client.fail_sends = True
    await rig.fwd.run_turn(create(), rig.sink)
    assert rig.sink.gone
    assert rig.turns("completed") == 1
    assert rig.metric("gateway_drained_turns_total") == 1
    await rig.fwd.aclose()
    stats = rig.ctx.pools.stats()["acct-0"]
    assert stats.leased == 0 and stats.idle == 1
    assert rig.ctx.active["acct-0"] == 0


async def test_aclose_is_idempotent_and_a_never_dialled_client_gives_nothing_back(
    rig_factory: Callable[..., Rig],
) -> None:
    rig = rig_factory()
    await rig.fwd.aclose()
    await rig.fwd.aclose()
    assert rig.ctx.active["acct-0"] == 0
    assert rig.ctx.pools.stats()["acct-0"].idle == 0


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (401, "upstream_account_error"),
        (429, "rate_limit_exceeded"),
        (503, "upstream_handshake_rejected"),
    ],
)
async def test_a_refused_dial_answers_the_turn_with_an_error(
    rig_factory: Callable[..., Rig], status: int, code: str
) -> None:
    rig = rig_factory()
    rig.upstream.refuse_dials(status)
    await rig.fwd.run_turn(create(), rig.sink)
    [err] = rig.client.turn()
    assert err["error"]["code"] == code
    assert rig.client.closed is None
    assert rig.turns("upstream_failed") == 1
    await rig.fwd.run_turn(create(), rig.sink)  # the next frame dials again
    assert types(rig.client.turn())[-1] == "response.completed"


def test_dial_failure_events_say_why() -> None:
    exhausted = json.loads(dial_failure_event(PoolExhausted("busy"), "a"))
    assert exhausted["error"]["code"] == "pool_exhausted"
    failed = DialFailed("a", "dial failed")
    failed.__cause__ = DialError("no route")
    assert json.loads(dial_failure_event(failed, "a"))["error"]["code"] == "upstream_unavailable"
    rejected = DialFailed("a", "dial failed")
    rejected.__cause__ = HandshakeRejected(403, {}, b"")
    assert json.loads(dial_failure_event(rejected, "a"))["error"]["code"] == (
        "upstream_account_error"
    )


async def test_a_full_pool_answers_pool_exhausted(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory(max_conns=1, acquire_timeout_s=0.01)
    held = await rig.ctx.pools.pool("acct-0").acquire()
    await rig.fwd.run_turn(create(), rig.sink)
    [err] = rig.client.turn()
    assert err["error"]["code"] == "pool_exhausted"
    held.release(broken=False)


class GatedDialer(FakeDialer):
    """Holds each dial until the test opens the gate."""

    def __init__(self, upstream: FakeUpstream) -> None:
        super().__init__(upstream)
        self.started = asyncio.Event()
        self.gate = asyncio.Event()

    async def dial(self, account_id: str) -> FakeSocket:
        self.started.set()
        await self.gate.wait()
        return await super().dial(account_id)


async def test_a_client_that_leaves_during_the_dial_gives_the_socket_back(
    rig_factory: Callable[..., Rig],
) -> None:
    dialer = GatedDialer(FakeUpstream())
    rig = rig_factory(dialer=dialer)
    turn = asyncio.create_task(rig.fwd.run_turn(create(), rig.sink))
    await dialer.started.wait()
    await rig.fwd.aclose()
    dialer.gate.set()
    await turn
    assert rig.upstream.requests == []
    stats = rig.ctx.pools.stats()["acct-0"]
    assert stats.leased == 0 and stats.idle == 1


async def test_other_frames_go_upstream_verbatim(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory()
    seen: list[str | bytes] = []

    async def capture(data: str | bytes, timeout: float | None = None) -> None:
        seen.append(data)

    await rig.fwd.on_other_frame('{"type": "x"}', "x", rig.sink)
    assert rig.dialer.dials == ["acct-0"]
    rig.socket.send_text = capture  # type: ignore[method-assign]
    await rig.fwd.on_other_frame('{"type": "session.update"}', "session.update", rig.sink)
    assert seen == ['{"type": "session.update"}']


async def test_an_other_frame_on_a_dead_socket_answers_502(
    rig_factory: Callable[..., Rig],
) -> None:
    rig = rig_factory()
    await rig.fwd.run_turn(create(), rig.sink)
    rig.client.turn()
    await rig.socket.aclose(1000)
    await rig.fwd.on_other_frame('{"type": "x"}', "x", rig.sink)
    [err] = rig.client.turn()
    assert err["error"]["code"] == "upstream_unavailable" and err["status"] == 502
    assert rig.fwd.broken


async def test_an_other_frame_whose_dial_fails_is_answered_by_the_dial_error(
    rig_factory: Callable[..., Rig],
) -> None:
    rig = rig_factory()
    rig.upstream.refuse_dials(503)
    await rig.fwd.on_other_frame('{"type": "x"}', "x", rig.sink)
    [err] = rig.client.turn()
    assert err["error"]["code"] == "upstream_handshake_rejected"


async def test_the_turn_span_carries_account_response_and_usage(
    rig_factory: Callable[..., Rig],
) -> None:
    exporter = InMemorySpanExporter()
    rig = rig_factory(exporter=exporter)
    await rig.fwd.run_turn(create(), rig.sink)
    rid = rig.client.turn()[-1]["response"]["id"]
    [span] = exporter.get_finished_spans()
    attrs = dict(span.attributes or {})
    assert attrs["gateway.mode"] == "passthrough"
    assert attrs["gateway.account"] == "acct-0"
    assert attrs["gen_ai.response.id"] == rid
    assert attrs["gen_ai.usage.input_tokens"] == 3
    assert attrs["gen_ai.usage.output_tokens"] == 2
    assert attrs["gateway.drained_after_disconnect"] is False
