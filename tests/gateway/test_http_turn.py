"""POST /v1/responses as a turn, in-process: the whole app over httpx's ASGI transport,
the upstream an httpx MockTransport that records what it was sent."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from gateway.app import build_app
from gateway.config import Config, parse_config
from statestore import TurnBinding
from tests.support import toml_dumps

CLIENT = {"Authorization": "Bearer sk-client"}
KEYS = ("sk-upstream-0-secret", "sk-upstream-1-secret")


def config(accounts: int = 2, **openai_ws: object) -> Config:
    doc: dict[str, object] = {
        "clients": [{"key": "sk-client", "group": "default"}],
        "accounts": [
            {"id": f"acct-{i}", "api_key": KEYS[i], "base_url": "http://upstream.test/v1"}
            for i in range(accounts)
        ],
        "openai_ws": {"retry_backoff_initial_ms": 0, **openai_ws},
    }
    return parse_config(toml_dumps(doc))


def sse(*events: dict[str, Any]) -> bytes:
    return b"".join(b"event: x\ndata: " + json.dumps(e).encode() + b"\n\n" for e in events)


def streamed(body: bytes) -> httpx.Response:
    """An SSE answer as the network delivers it (a stream, read once)."""
    return httpx.Response(
        200, stream=httpx.ByteStream(body), headers={"content-type": "text/event-stream"}
    )


def completed(rid: str, output: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "type": "response.completed",
        "response": {"id": rid, "status": "completed", "output": output or [], "usage": {}},
    }


@dataclass
class Upstream:
    """Scripted answers, one per POST in order (then 200s); what each POST carried."""

    answers: list[httpx.Response] = field(default_factory=list)
    seen: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (account key, body)
    ids: int = 0

    def handle(self, request: httpx.Request) -> httpx.Response:
        key = request.headers["authorization"].removeprefix("Bearer ")
        body = json.loads(request.content)
        self.seen.append((key, body))
        if self.answers:
            return self.answers.pop(0)
        self.ids += 1
        rid = f"resp_{self.ids}"
        if body.get("stream"):
            events = ({"type": "response.created", "response": {"id": rid}}, completed(rid))
            return streamed(sse(*events))
        return httpx.Response(200, json=completed(rid)["response"])

    def account_of(self, index: int) -> str:
        return f"acct-{KEYS.index(self.seen[index][0])}"


@dataclass
class Rig:
    client: httpx.AsyncClient
    upstream: Upstream
    app: Any

    async def post(self, **body: Any) -> httpx.Response:
        payload = {"model": "m", "input": [user("hi")], **body}
        return await self.client.post("/v1/responses", json=payload, headers=CLIENT)

    def metric(self, name: str, **labels: str) -> float:
        value = self.app.state.gateway.ctx.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else float(value)


def user(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


@pytest.fixture
async def rig_factory() -> AsyncIterator[Callable[..., Rig]]:
    clients: list[httpx.AsyncClient] = []
    apps: list[Any] = []

    def build(cfg: Config | None = None) -> Rig:
        upstream = Upstream()
        app = build_app(cfg or config(), http_transport=httpx.MockTransport(upstream.handle))
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://gw")
        clients.append(client)
        apps.append(app)
        return Rig(client, upstream, app)

    yield build
    for client in clients:
        await client.aclose()
    for app in apps:
        await app.state.gateway.ctx.aclose()


def error_response(
    status: int, message: str, code: str | None = None, **headers: str
) -> httpx.Response:
    body = {"error": {"message": message, "type": "invalid_request_error", "code": code}}
    return httpx.Response(status, json=body, headers=headers)


async def test_streamed_turn_is_relayed_byte_for_byte_and_repaired_first(
    rig_factory: Callable[..., Rig],
) -> None:
    rig = rig_factory()
    answer = sse(
        {"type": "response.created", "response": {"id": "resp_s"}},
        {"type": "response.output_text.delta", "delta": "hé"},
        completed("resp_s"),
    )
    rig.upstream.answers.append(streamed(answer))
    orphan = {"type": "function_call_output", "call_id": "call_x", "output": "stale"}
    call = {"type": "function_call", "call_id": "call_y", "name": "exec", "arguments": "{}"}
    response = await rig.post(
        stream=True, type="response.create", generate=True, input=[orphan, user("go"), call]
    )
    assert response.status_code == 200
    assert response.content == answer
    _, sent = rig.upstream.seen[0]
    assert "type" not in sent and "generate" not in sent
    kinds = [(i.get("type"), i.get("call_id")) for i in sent["input"]]
    assert kinds == [
        ("message", None),
        ("function_call", "call_y"),
        ("function_call_output", "call_y"),
    ]
    assert sent["input"][2]["output"] == "aborted"
    assert (
        rig.metric(
            "gateway_normalizer_decisions_total",
            state="repaired",
            reason="injected_aborted_outputs",
        )
        == 1
    )
    assert rig.metric("gateway_turns_total", mode="http", outcome="http_completed") == 1


async def test_json_turn_is_returned_unchanged_and_bound_to_its_account(
    rig_factory: Callable[..., Rig],
) -> None:
    rig = rig_factory()
    response = await rig.post(stream=False, store=True)
    assert response.status_code == 200
    assert response.json()["id"] == "resp_1"
    ctx = rig.app.state.gateway.ctx
    found = await ctx.store.lookup("default", response_id="resp_1", session_key=None)
    assert found.account_id == rig.upstream.account_of(0)
    assert found.stored


async def test_a_continuation_goes_to_the_account_that_owns_the_previous_response(
    rig_factory: Callable[..., Rig],
) -> None:
    rig = rig_factory()
    ctx = rig.app.state.gateway.ctx
    for owner in ("acct-0", "acct-1", "acct-1", "acct-0"):
        rid = f"resp_owned_by_{owner}_{len(rig.upstream.seen)}"
        await ctx.store.bind_turn(
            TurnBinding(group="default", account_id=owner, response_id=rid, stored=True)
        )
        ctx.scheduler.active[owner] = 5  # busy: least-loaded would pick the other one
        response = await rig.post(previous_response_id=rid, store=True, input=[user("next")])
        assert response.status_code == 200
        assert rig.upstream.account_of(-1) == owner
        assert rig.upstream.seen[-1][1]["previous_response_id"] == rid
        ctx.scheduler.active[owner] = 0


async def test_a_refused_post_is_retried_and_every_refusal_is_one_clear_error(
    rig_factory: Callable[..., Rig],
) -> None:
    rig = rig_factory(config(accounts=1, retry_max_attempts=3))
    rig.upstream.answers.append(error_response(503, "overloaded", "server_error"))
    response = await rig.post(stream=True)
    assert response.status_code == 200 and b"response.completed" in response.content
    assert len(rig.upstream.seen) == 2
    rig.upstream.answers.extend(error_response(503, "overloaded") for _ in range(5))
    refused = await rig.post(stream=True)
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "upstream_unavailable"
    assert len(rig.upstream.seen) == 2 + 3


async def test_a_rate_limited_account_hands_a_new_conversation_to_another(
    rig_factory: Callable[..., Rig],
) -> None:
    rig = rig_factory()
    rig.upstream.answers.append(
        error_response(429, "Rate limit reached", "rate_limit_exceeded", **{"retry-after": "7"})
    )
    response = await rig.post(stream=True)
    assert response.status_code == 200
    assert rig.upstream.account_of(0) != rig.upstream.account_of(1)
    limited = rig.upstream.account_of(0)
    ctx = rig.app.state.gateway.ctx
    assert ctx.scheduler.state(limited).value == "cooling"
    # The other one limited too: one 429 saying how long to wait.
    rig.upstream.answers.append(error_response(429, "Rate limit reached", **{"retry-after": "3"}))
    refused = await rig.post(stream=True)
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "3"
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"


async def test_pairing_rejections_are_repaired_and_resent(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory()
    # Nothing here knows the previous response's calls, so the output is kept and sent;
    # the upstream's rejection names it, and the gateway drops it and sends again.
    rig.upstream.answers.append(
        error_response(400, "No tool call found for function call output with call_id call_q.")
    )
    orphan = {"type": "function_call_output", "call_id": "call_q", "output": "x"}
    response = await rig.post(
        previous_response_id="resp_unknown", store=True, input=[orphan, user("b")]
    )
    assert response.status_code == 200
    first, second = rig.upstream.seen[0][1], rig.upstream.seen[1][1]
    assert "call_q" in json.dumps(first) and "call_q" not in json.dumps(second)


async def test_account_errors_never_show_the_upstream_words(
    rig_factory: Callable[..., Rig],
) -> None:
    rig = rig_factory(config(accounts=1))
    rig.upstream.answers.append(
        error_response(401, f"Incorrect API key provided: {KEYS[0]}", "invalid_api_key")
    )
    response = await rig.post(stream=True)
    assert response.status_code == 502
    assert KEYS[0] not in response.text and "acct-0" in response.text
    assert response.json()["error"]["code"] == "upstream_account_error"


async def test_an_undecodable_body_is_a_400(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory()
    response = await rig.client.post("/v1/responses", content=b'{"input": [1, 2', headers=CLIENT)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_request"
    assert rig.upstream.seen == []


async def test_a_previous_response_with_no_known_owner_is_looked_for_on_each_account(
    rig_factory: Callable[..., Rig],
) -> None:
    rig = rig_factory()
    ctx = rig.app.state.gateway.ctx
    ctx.scheduler.active["acct-1"] = 9  # acct-0 is asked first
    rig.upstream.answers.append(
        error_response(
            400, "Previous response with id 'resp_x' not found.", "previous_response_not_found"
        )
    )
    response = await rig.post(previous_response_id="resp_x", store=True, stream=True)
    assert response.status_code == 200
    assert [rig.upstream.account_of(i) for i in range(2)] == ["acct-0", "acct-1"]
    # With an owner on record, a miss is the client's answer (no search).
    await ctx.store.bind_turn(
        TurnBinding(group="default", account_id="acct-0", response_id="resp_y", stored=True)
    )
    rig.upstream.answers.append(
        error_response(
            400, "Previous response with id 'resp_y' not found.", "previous_response_not_found"
        )
    )
    missing = await rig.post(previous_response_id="resp_y", store=True, stream=True)
    assert missing.status_code == 400
    assert missing.json()["error"]["code"] == "previous_response_not_found"
