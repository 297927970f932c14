"""The ctx_pool turn loop in-process: a real GatewayContext with a fake upstream injected
(tests/gateway/fake_upstream.py) and an httpx MockTransport for the HTTP paths. Every
recovery action and failure kind is driven through ``run_turn`` the way a client socket
drives it."""

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
from tests.gateway.fake_upstream import (
    Close,
    FakeDialer,
    FakeSocket,
    FakeUpstream,
    Silence,
    error_frame,
    event,
)
from tests.support import FakeClock, toml_dumps

USER = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}


def config(
    accounts: int = 1, statestore: dict[str, object] | None = None, **openai_ws: object
) -> Config:
    doc: dict[str, object] = {
        "statestore": statestore or {},
        "clients": [{"key": "sk-client", "group": "default"}],
        "accounts": [
            {"id": f"acct-{i}", "api_key": f"sk-{i}", "base_url": "http://upstream.test/v1"}
            for i in range(accounts)
        ],
        "openai_ws": {
            "retry_backoff_initial_ms": 0,
            "liveness_interval_s": 0.05,
            "ping_timeout_s": 0.05,
            **openai_ws,
        },
    }
    return parse_config(toml_dumps(doc))


class ClientSocket:
    """Stands in for the Starlette WebSocket behind a ClientSink: records what was sent."""

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []
        self.closed: int | None = None
        self.fail_sends = False
        self._send = self.send  # the ASGI send a sink writes events to
        self.scope: dict[str, Any] = {"type": "websocket"}  # no direct writer offered

    async def send(self, message: dict[str, Any]) -> None:
        if self.fail_sends:
            raise RuntimeError("client went away")
        if message["type"] == "websocket.close":
            self.closed = message["code"]
            return
        self.frames.append(json.loads(message["text"]))

    def turn(self) -> list[dict[str, Any]]:
        frames, self.frames = self.frames, []
        return frames


class Rig:
    def __init__(self, ctx: GatewayContext, upstream: FakeUpstream, dialer: FakeDialer) -> None:
        self.ctx = ctx
        self.upstream = upstream
        self.dialer = dialer

    def forwarder(self, session_key: str | None = None) -> tuple[CtxPoolForwarder, ClientSink]:
        identity = ClientIdentity(group="default", name="client-0", key_id="k0")
        fwd = CtxPoolForwarder(self.ctx, identity, {}, session_key)
        client = ClientSocket()
        return fwd, ClientSink(cast(WebSocket, client))

    @staticmethod
    def client(sink: ClientSink) -> ClientSocket:
        return cast(ClientSocket, sink._send.__self__)  # type: ignore[attr-defined]

    def metric(self, name: str, **labels: str) -> float:
        value = self.ctx.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


@pytest.fixture
async def rig_factory() -> AsyncIterator[Callable[..., Rig]]:
    rigs: list[Rig] = []

    def build(
        cfg: Config | None = None,
        http: Callable[[httpx.Request], httpx.Response] | None = None,
        deltas: int = 2,
    ) -> Rig:
        upstream = FakeUpstream(deltas=deltas)
        dialer = FakeDialer(upstream)
        transport = httpx.MockTransport(http) if http is not None else None
        ctx = GatewayContext(cfg or config(), dialer=dialer, http_transport=transport)
        rig = Rig(ctx, upstream, dialer)
        rigs.append(rig)
        return rig

    yield build
    for rig in rigs:
        await rig.ctx.aclose()


def create(items: list[dict[str, Any]] | None = None, **fields: Any) -> str:
    body: dict[str, Any] = {"type": "response.create", "model": "m", "store": False}
    body["input"] = items if items is not None else [USER]
    body.update(fields)
    return json.dumps(body)


def user(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


def types(frames: list[dict[str, Any]]) -> list[str]:
    return [f["type"] for f in frames]


def rid(frames: list[dict[str, Any]]) -> str:
    return str(frames[-1]["response"]["id"])


async def test_a_turn_is_relayed_bound_and_its_socket_returned(
    rig_factory: Callable[..., Rig],
) -> None:
    rig = rig_factory()
    fwd, sink = rig.forwarder(session_key="sess-1")
    await fwd.run_turn(create(), sink)
    frames = Rig.client(sink).turn()
    assert types(frames) == [
        "response.created",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.completed",
    ]
    await fwd.binder.flush()
    found = await rig.ctx.store.lookup("default", response_id=rid(frames), session_key="sess-1")
    assert found.account_id == "acct-0"
    assert found.session_last_response_id == rid(frames)
    assert rig.ctx.pools.stats()["acct-0"].leased == 0
    assert rig.metric("gateway_turns_total", mode="ctx_pool", outcome="completed") == 1


async def test_continuation_reuses_the_socket_that_holds_the_previous_response(
    rig_factory: Callable[..., Rig],
) -> None:
    rig = rig_factory()
    fwd, sink = rig.forwarder()
    await fwd.run_turn(create([user(f"run {'CALL'}")]), sink)
    first = Rig.client(sink).turn()
    call = first[-1]["response"]["output"][1]
    answer = {"type": "function_call_output", "call_id": call["call_id"], "output": "ok"}
    await fwd.run_turn(create([answer], previous_response_id=rid(first)), sink)
    second = Rig.client(sink).turn()
    assert types(second)[-1] == "response.completed"
    assert len(rig.dialer.dials) == 1
    sent = rig.upstream.requests[-1]
    assert sent["previous_response_id"] == rid(first) and sent["input"] == [answer]


async def test_an_unanswered_call_gets_an_aborted_output(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory()
    fwd, sink = rig.forwarder()
    await fwd.run_turn(create([user("CALL")]), sink)
    first = Rig.client(sink).turn()
    call_id = first[-1]["response"]["output"][1]["call_id"]
    await fwd.run_turn(create([user("never mind")], previous_response_id=rid(first)), sink)
    assert types(Rig.client(sink).turn())[-1] == "response.completed"
    sent = rig.upstream.requests[-1]["input"]
    assert sent[0] == {"type": "function_call_output", "call_id": call_id, "output": "aborted"}


async def test_transient_dial_failures_are_retried(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory()
    rig.upstream.refuse_dials(503, times=2)
    fwd, sink = rig.forwarder()
    await fwd.run_turn(create(), sink)
    assert types(Rig.client(sink).turn())[-1] == "response.completed"
    assert len(rig.dialer.dials) == 3
    assert rig.metric("gateway_retry_attempts_total", reason="handshake_5xx") == 2


async def test_retries_run_out_into_one_clear_error(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory(config(retry_max_attempts=3))
    rig.upstream.refuse_dials(503, times=10)
    fwd, sink = rig.forwarder()
    await fwd.run_turn(create(), sink)
    frames = Rig.client(sink).turn()
    assert types(frames) == ["error"]
    assert frames[0]["error"]["code"] == "upstream_unavailable"
    assert len(rig.dialer.dials) == 3


async def test_a_close_before_any_event_is_retried_on_another_socket(
    rig_factory: Callable[..., Rig],
) -> None:
    rig = rig_factory()
    rig.upstream.fail_next(Close(1011))
    fwd, sink = rig.forwarder()
    await fwd.run_turn(create(), sink)
    assert types(Rig.client(sink).turn())[-1] == "response.completed"
    assert len(rig.dialer.dials) == 2


async def test_a_close_after_events_ends_the_turn_with_an_error_event(
    rig_factory: Callable[..., Rig],
) -> None:
    rig = rig_factory()
    rig.upstream.fail_next(event("response.created", response={"id": "r1"}), Close(1011))
    fwd, sink = rig.forwarder()
    await fwd.run_turn(create(), sink)
    frames = Rig.client(sink).turn()
    assert types(frames) == ["response.created", "error"]
    assert frames[-1]["error"]["code"] == "upstream_stream_interrupted"
    assert rig.ctx.pools.stats()["acct-0"].leased == 0


async def test_a_half_open_socket_before_any_event_is_retried(
    rig_factory: Callable[..., Rig],
) -> None:
    rig = rig_factory()
    rig.upstream.fail_next(Silence(half_open=True))
    fwd, sink = rig.forwarder()
    await fwd.run_turn(create(), sink)
    assert types(Rig.client(sink).turn())[-1] == "response.completed"
    first: FakeSocket = rig.upstream.sockets[0]
    assert first.pings == 1 and first.closed


async def test_a_half_open_socket_mid_stream_is_an_error_and_is_retired(
    rig_factory: Callable[..., Rig],
) -> None:
    rig = rig_factory()
    rig.upstream.fail_next(event("response.created", response={"id": "r1"}), Silence())
    fwd, sink = rig.forwarder()
    await fwd.run_turn(create(), sink)
    frames = Rig.client(sink).turn()
    assert types(frames) == ["response.created", "error"]
    assert rig.upstream.sockets[0].closed
    assert rig.ctx.pools.stats()["acct-0"].leased == 0


async def test_a_live_but_slow_upstream_is_pinged_and_waited_for(
    rig_factory: Callable[..., Rig],
) -> None:
    rig = rig_factory(config(read_timeout_s=0.3))
    rig.upstream.fail_next(event("response.created", response={"id": "r1"}), Silence(False))
    fwd, sink = rig.forwarder()
    await fwd.run_turn(create(), sink)
    frames = Rig.client(sink).turn()
    # Pongs kept coming, so only the outer read deadline ended the wait.
    assert types(frames) == ["response.created", "error"]
    assert rig.upstream.sockets[0].pings >= 2


async def test_previous_response_not_found_is_replayed_from_the_transcript(
    rig_factory: Callable[..., Rig],
) -> None:
    rig = rig_factory()
    fwd, sink = rig.forwarder()
    await fwd.run_turn(create([user("remember 7")]), sink)
    first = Rig.client(sink).turn()
    rig.upstream.sockets[0].last = None  # the upstream socket lost its cache
    await fwd.run_turn(create([user("which?")], previous_response_id=rid(first)), sink)
    assert types(Rig.client(sink).turn())[-1] == "response.completed"
    replay = rig.upstream.requests[-1]
    assert "previous_response_id" not in replay
    assert "remember 7" in json.dumps(replay["input"]) and "which?" in json.dumps(replay["input"])


async def test_previous_response_unknown_everywhere_asks_the_client_to_replay(
    rig_factory: Callable[..., Rig],
) -> None:
    rig = rig_factory()
    fwd, sink = rig.forwarder()
    await fwd.run_turn(create([user("x")], previous_response_id="resp_elsewhere"), sink)
    frames = Rig.client(sink).turn()
    assert types(frames) == ["error"]
    assert frames[0]["error"]["code"] == "previous_response_not_found"


async def test_an_orphan_output_the_upstream_names_is_dropped_and_resent(
    rig_factory: Callable[..., Rig],
) -> None:
    rig = rig_factory()
    fwd, sink = rig.forwarder()
    await fwd.run_turn(create([user("a")], store=True), sink)
    first = Rig.client(sink).turn()
    # A new client socket, and a store that never got the binding (another instance's
    # response): nothing says which calls the previous response had.
    await rig.ctx.store.forget_response("default", rid(first))
    other, other_sink = rig.forwarder()
    orphan = {"type": "function_call_output", "call_id": "call_ghost", "output": "x"}
    await other.run_turn(
        create([orphan, user("b")], previous_response_id=rid(first), store=True), other_sink
    )
    assert types(Rig.client(other_sink).turn())[-1] == "response.completed"
    assert "call_ghost" not in json.dumps(rig.upstream.requests[-1])
    assert (
        rig.metric("gateway_recoveries_total", reason="drop_orphan_output", result="attempted") == 1
    )


async def test_an_upstream_rejection_of_the_request_itself_is_relayed(
    rig_factory: Callable[..., Rig],
) -> None:
    rig = rig_factory()
    rig.upstream.fail_next(error_frame(400, "Invalid value for 'model'.", "invalid_value"))
    fwd, sink = rig.forwarder()
    await fwd.run_turn(create(), sink)
    frames = Rig.client(sink).turn()
    assert types(frames) == ["error"] and frames[0]["error"]["code"] == "invalid_value"
    assert len(rig.dialer.dials) == 1


async def test_a_policy_close_falls_back_to_http_once(rig_factory: Callable[..., Rig]) -> None:
    posted: list[dict[str, Any]] = []

    def http(request: httpx.Request) -> httpx.Response:
        posted.append(json.loads(request.content))
        body = "".join(
            f"data: {frame}\n\n"
            for frame in (
                event("response.created", response={"id": "resp_http"}),
                event(
                    "response.completed",
                    response={"id": "resp_http", "status": "completed", "output": []},
                ),
            )
        )
        return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})

    rig = rig_factory(http=http)
    rig.upstream.fail_next(Close(1008))
    fwd, sink = rig.forwarder()
    await fwd.run_turn(create(), sink)
    frames = Rig.client(sink).turn()
    assert types(frames) == ["response.created", "response.completed"]
    assert len(posted) == 1 and "type" not in posted[0]
    assert rig.ctx.cooling_down("acct-0")


async def test_a_malformed_request_is_a_client_error(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory()
    fwd, sink = rig.forwarder()
    await fwd.run_turn('{"type": "response.create", "input": 5}', sink)
    frames = Rig.client(sink).turn()
    assert types(frames) == ["error"] and frames[0]["error"]["code"] == "invalid_request"
    assert rig.dialer.dials == []


async def test_a_client_that_left_mid_turn_still_drains_and_binds(
    rig_factory: Callable[..., Rig],
) -> None:
    rig = rig_factory(deltas=5)
    fwd, sink = rig.forwarder(session_key="sess-gone")
    Rig.client(sink).fail_sends = True
    await fwd.run_turn(create(), sink)
    assert sink.gone
    await fwd.binder.flush()
    found = await rig.ctx.store.lookup("default", response_id=None, session_key="sess-gone")
    assert found.session_last_response_id is not None
    assert rig.metric("gateway_drained_turns_total") == 1
    assert rig.ctx.pools.stats()["acct-0"].idle == 1


async def test_no_account_for_the_group(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory()
    fwd = CtxPoolForwarder(rig.ctx, ClientIdentity(group="nobody", name="c", key_id="k1"), {}, None)
    client = ClientSocket()
    sink = ClientSink(cast(WebSocket, client))
    await fwd.run_turn(create(), sink)
    assert client.frames[0]["error"]["code"] == "no_account"


def _dialed_accounts(rig: Rig) -> list[str]:
    return list(rig.dialer.dials)


async def test_a_rate_limited_account_hands_the_turn_to_another_with_the_whole_conversation(
    rig_factory: Callable[..., Rig],
) -> None:
    rig = rig_factory(config(accounts=2))
    fwd, sink = rig.forwarder()
    await fwd.run_turn(create([user("remember 7")]), sink)
    first = Rig.client(sink).turn()
    owner = fwd.state.account_id
    rig.upstream.fail_next(error_frame(429, "Rate limit reached. Try again in 20s.", None))
    await fwd.run_turn(create([user("which?")], previous_response_id=rid(first)), sink)
    second = Rig.client(sink).turn()
    assert types(second)[-1] == "response.completed"
    assert "error" not in types(second)
    moved_to = fwd.state.account_id
    assert moved_to != owner
    sent = rig.upstream.requests[-1]
    assert "previous_response_id" not in sent
    assert "remember 7" in json.dumps(sent["input"]) and "which?" in json.dumps(sent["input"])
    assert rig.ctx.scheduler.state(str(owner)).value == "cooling"
    assert rig.metric("gateway_account_failovers_total", reason="rate_limited") == 1
    # Later turns stay on the new account.
    await fwd.run_turn(create([user("and now?")], previous_response_id=rid(second)), sink)
    assert types(Rig.client(sink).turn())[-1] == "response.completed"
    assert fwd.state.account_id == moved_to


async def test_a_handshake_429_cools_the_account_for_its_retry_after(
    rig_factory: Callable[..., Rig],
) -> None:
    rig = rig_factory(config(accounts=2))
    clock = rig.ctx.scheduler.clock = FakeClock()
    rig.upstream.refuse_dials(429, times=1, **{"Retry-After": "2"})
    fwd, sink = rig.forwarder()
    await fwd.run_turn(create(), sink)
    assert types(Rig.client(sink).turn())[-1] == "response.completed"
    limited, served = rig.dialer.dials[0], rig.dialer.dials[-1]
    assert limited != served
    assert rig.ctx.scheduler.until(limited) == clock.now + 2.0
    # A new conversation meanwhile does not dial the cooling account.
    other, other_sink = rig.forwarder()
    await other.run_turn(create(), other_sink)
    assert limited not in rig.dialer.dials[2:]


async def test_every_account_limited_is_one_clear_429_naming_the_wait(
    rig_factory: Callable[..., Rig],
) -> None:
    rig = rig_factory(config(accounts=2))
    rig.upstream.refuse_dials(429, times=2, **{"Retry-After": "30"})
    fwd, sink = rig.forwarder()
    await fwd.run_turn(create(), sink)
    frames = Rig.client(sink).turn()
    assert types(frames) == ["error"]
    assert frames[0]["status"] == 429 and frames[0]["error"]["code"] == "rate_limit_exceeded"
    assert frames[0]["headers"]["retry-after"] == "30"
    assert "30 s" in frames[0]["error"]["message"]
    assert len(rig.dialer.dials) == 2  # one dial per account, no retry storm
    # While both cool down, a new turn is refused at once without dialing.
    await fwd.run_turn(create(), sink)
    assert types(Rig.client(sink).turn()) == ["error"]
    assert len(rig.dialer.dials) == 2


async def test_a_conversation_without_transcript_cannot_move_and_asks_for_a_replay(
    rig_factory: Callable[..., Rig],
) -> None:
    rig = rig_factory(config(accounts=2))
    fwd, sink = rig.forwarder()
    await fwd.run_turn(create([user("a")], store=True), sink)
    first = Rig.client(sink).turn()
    fresh, fresh_sink = rig.forwarder()  # a new client socket: no transcript here
    rig.upstream.fail_next(error_frame(429, "quota", "insufficient_quota"))
    await fresh.run_turn(
        create([user("b")], previous_response_id=rid(first), store=True), fresh_sink
    )
    frames = Rig.client(fresh_sink).turn()
    assert types(frames) == ["error"]
    assert frames[0]["error"]["code"] == "previous_response_not_found"


async def test_repeated_transport_failures_take_an_account_out_of_rotation(
    rig_factory: Callable[..., Rig],
) -> None:
    rig = rig_factory(config(accounts=2, account_failure_threshold=2, retry_max_attempts=4))
    rig.upstream.refuse_dials(503, times=2)
    fwd, sink = rig.forwarder()
    await fwd.run_turn(create(), sink)
    assert types(Rig.client(sink).turn())[-1] == "response.completed"
    first = rig.dialer.dials[0]
    assert rig.ctx.scheduler.state(first).value == "open"
    assert rig.dialer.dials[-1] != first
    assert rig.metric("gateway_account_failovers_total", reason="account_open") == 1


DURABLE = {"durable_transcripts": True}


async def _two_turns(rig: Rig, session: str) -> tuple[CtxPoolForwarder, str]:
    fwd, sink = rig.forwarder(session_key=session)
    await fwd.run_turn(create([user("remember 7")]), sink)
    first = Rig.client(sink).turn()
    await fwd.run_turn(create([user("and 8")], previous_response_id=rid(first)), sink)
    second = Rig.client(sink).turn()
    assert types(second)[-1] == "response.completed"
    await fwd.aclose()  # the client socket goes away; its bindings are written
    return fwd, rid(second)


async def test_a_conversation_whose_socket_lost_it_is_rebuilt_from_the_durable_transcript(
    rig_factory: Callable[..., Rig],
) -> None:
    rig = rig_factory(config(statestore=DURABLE))
    _, last = await _two_turns(rig, "sess-d")
    for sock in rig.upstream.sockets:
        sock.last = None  # the upstream sockets lost their connection-local state
    again, sink = rig.forwarder(session_key="sess-d")  # the client reconnects
    await again.run_turn(create([user("which?")], previous_response_id=last), sink)
    frames = Rig.client(sink).turn()
    assert types(frames)[-1] == "response.completed" and "error" not in types(frames)
    sent = rig.upstream.requests[-1]
    assert "previous_response_id" not in sent
    text = json.dumps(sent["input"])
    assert all(word in text for word in ("remember 7", "and 8", "which?"))
    assert (
        rig.metric("gateway_recoveries_total", reason="durable_transcript", result="rebuilt") == 1
    )


async def test_another_instance_rebuilds_before_going_upstream(
    rig_factory: Callable[..., Rig],
) -> None:
    first_instance = rig_factory(config(statestore=DURABLE))
    _, last = await _two_turns(first_instance, "sess-e")
    second_instance = rig_factory(config(statestore=DURABLE))
    second_instance.ctx.store = first_instance.ctx.store  # one shared store, two processes
    fwd, sink = second_instance.forwarder(session_key="sess-e")
    await fwd.run_turn(create([user("which?")], previous_response_id=last), sink)
    assert types(Rig.client(sink).turn())[-1] == "response.completed"
    sent = second_instance.upstream.requests
    assert len(sent) == 1 and "previous_response_id" not in sent[0]
    assert "remember 7" in json.dumps(sent[0]["input"])


async def test_over_the_bound_or_switched_off_the_client_is_asked_to_replay(
    rig_factory: Callable[..., Rig],
) -> None:
    for statestore in (
        {"durable_transcripts": True, "durable_transcript_max_bytes": 100},
        {"durable_transcripts": False},
    ):
        rig = rig_factory(config(statestore=statestore))
        _, last = await _two_turns(rig, "sess-f")
        for sock in rig.upstream.sockets:
            sock.last = None
        again, sink = rig.forwarder(session_key="sess-f")
        await again.run_turn(create([user("which?")], previous_response_id=last), sink)
        frames = Rig.client(sink).turn()
        assert types(frames) == ["error"]
        assert frames[0]["error"]["code"] == "previous_response_not_found"


async def test_a_stored_response_whose_owner_is_unknown_is_found_on_another_account(
    rig_factory: Callable[..., Rig],
) -> None:
    rig = rig_factory(config(accounts=2))
    fwd, sink = rig.forwarder()
    await fwd.run_turn(create([user("remember 7")], store=True), sink)
    first = Rig.client(sink).turn()
    owner = fwd.state.account_id
    await rig.ctx.store.forget_response("default", rid(first))  # its binding never landed
    other, other_sink = rig.forwarder()
    rig.ctx.scheduler.active[str(owner)] = 9  # least-loaded picks the wrong one first
    await other.run_turn(
        create([user("which?")], previous_response_id=rid(first), store=True), other_sink
    )
    frames = Rig.client(other_sink).turn()
    assert types(frames)[-1] == "response.completed" and "error" not in types(frames)
    assert other.state.account_id == owner
    assert rig.metric("gateway_recoveries_total", reason="owner_search", result="attempted") == 1
