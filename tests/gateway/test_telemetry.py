"""Observability: spans per turn, metrics that move, the log lines, a log budget.

The gateway runs in-process under a real uvicorn server (so the test owns its
in-memory span exporter), the upstream simulator as a real process.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import msgspec
import pytest
import uvicorn
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from websockets.exceptions import InvalidStatus

from gateway.app import build_app
from gateway.config import Config
from gateway.logs import JsonFormatter
from gateway.telemetry import SampledHistogram
from tests.e2e.client import (
    create,
    function_calls,
    open_ws,
    response_id,
    terminal,
    turn,
    user_message,
)
from tests.e2e.harness import SimProcess, auth_headers, gateway_config
from tests.support import eventually, free_port

CALL = '[[sim call exec_command {"cmd":"echo ok"}]]'


@pytest.fixture(autouse=True)
def _reset(sim: SimProcess) -> None:
    sim.control.reset()


class InProcessGateway:
    def __init__(self, app: Any, port: int, exporter: InMemorySpanExporter) -> None:
        self.app = app
        self.port = port
        self.exporter = exporter

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/responses"

    @property
    def ctx(self) -> Any:
        return self.app.state.gateway.ctx

    async def metrics(self) -> str:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.port}") as client:
            return (await client.get("/metrics")).text


@asynccontextmanager
async def serve(sim: SimProcess, **overrides: dict[str, object]) -> AsyncIterator[InProcessGateway]:
    doc = gateway_config(sim.base_url, overrides={"telemetry": {"log_format": "text"}, **overrides})
    from tests.support import toml_dumps

    cfg = msgspec.toml.decode(toml_dumps(doc), type=Config)
    exporter = InMemorySpanExporter()
    app = build_app(cfg, span_exporter=exporter)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=port, lifespan="on", log_config=None, ws="websockets-sansio"
        )
    )
    task = asyncio.create_task(server.serve())
    await eventually(lambda: server.started or task.done(), what="the in-process gateway start")
    assert not task.done(), "in-process gateway failed to start"
    try:
        yield InProcessGateway(app, port, exporter)
    finally:
        server.should_exit = True
        await task


def spans_by_trace(exporter: InMemorySpanExporter) -> list[tuple[Any, list[str]]]:
    """Each turn span with the names of its descendants."""
    spans = exporter.get_finished_spans()
    turns = [s for s in spans if (s.attributes or {}).get("gen_ai.operation.name") == "chat"]
    out = []
    for root in turns:
        children = [
            s.name for s in spans if s.context.trace_id == root.context.trace_id and s is not root
        ]
        out.append((root, children))
    return out


def value(metrics: str, series: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_normal_turn_has_one_span_with_genai_attributes_and_children(sim: SimProcess) -> None:
    async with serve(sim) as gw:
        ws = await open_ws(
            gw.ws_url,
            auth_headers(
                traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                session_id="sess-trace-1",
            ),
        )
        try:
            events = await turn(ws, create("hello [[sim deltas=4]]"))
        finally:
            await ws.close()
    [(span, children)] = spans_by_trace(gw.exporter)
    attrs = dict(span.attributes or {})
    assert span.name == "chat gpt-test"  # {operation} {model}
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.provider.name"] == "openai" and "gen_ai.system" not in attrs
    assert attrs["gen_ai.conversation.id"] == "sess-trace-1"
    assert "error.type" not in attrs
    assert attrs["gen_ai.request.model"] == "gpt-test"
    assert attrs["gen_ai.response.id"] == response_id(events)
    assert attrs["gen_ai.usage.input_tokens"] > 0 and attrs["gen_ai.usage.output_tokens"] > 0
    assert attrs["gateway.account"] == "acct-a" and attrs["gateway.mode"] == "ctx_pool"
    assert attrs["gateway.conn_reused"] is False and attrs["gateway.retries"] == 0
    assert (
        attrs["gateway.normalizer.state"] == "consistent"
        and attrs["gateway.outcome"] == "completed"
    )
    assert attrs["gateway.ttft_ms"] >= 0
    for name in (
        "statestore.lookup",
        "pool.acquire",
        "upstream.dial",
        "upstream.write",
        "upstream.first_byte",
        "statestore.bind",
    ):
        assert name in children
    # the incoming traceparent is the parent of the turn
    assert format(span.context.trace_id, "032x") == "0af7651916cd43dd8448eb211c80319c"


async def test_recovered_turn_span_names_the_recovery(sim: SimProcess) -> None:
    async with serve(sim) as gw:
        ws = await open_ws(gw.ws_url, auth_headers())
        try:
            first = await turn(ws, create("remember 7"))
            sim.control.add_fault(kind="previous_response_not_found")
            second = await turn(
                ws, create(previous_response_id=response_id(first), items=[user_message("which?")])
            )
        finally:
            await ws.close()
    assert terminal(second)["type"] == "response.completed"
    turns = spans_by_trace(gw.exporter)
    assert len(turns) == 2
    span, children = turns[1]
    attrs = dict(span.attributes or {})
    assert attrs["gateway.recovery"] == "replay_full_transcript"
    assert attrs["gateway.outcome"] == "completed"
    assert children.count("upstream.write") == 2  # the failed attempt and the replay


async def test_fallback_turn_span_has_http_child(sim: SimProcess) -> None:
    sim.control.add_fault(kind="close_after_events", after_events=0, code=1008)
    async with serve(sim) as gw:
        ws = await open_ws(gw.ws_url, auth_headers())
        try:
            events = await turn(ws, create("policy"))
        finally:
            await ws.close()
    assert terminal(events)["type"] == "response.completed"
    [(span, children)] = spans_by_trace(gw.exporter)
    attrs = dict(span.attributes or {})
    assert attrs["gateway.fallback"] == "closed_policy"
    assert attrs["gateway.outcome"] == "http_completed"
    assert "upstream.http" in children


async def test_metrics_move_by_the_right_amount(
    sim: SimProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    # added latency is sampled (tests/gateway/test_metric_children.py); here every event
    monkeypatch.setattr(SampledHistogram, "every", 1)
    async with serve(sim) as gw:
        before = await gw.metrics()
        ws = await open_ws(gw.ws_url, auth_headers())
        try:
            first = await turn(ws, create(f"tool please {CALL}"))
            call_id = function_calls(first)[0]["call_id"]
            second = await turn(
                ws, create(previous_response_id=response_id(first), items=[user_message("skip")])
            )
            sim.control.add_fault(kind="handshake_status", status=503)
            assert sim.control.drop_connections() == 1
            await eventually(
                lambda: all(c.closed for c in gw.ctx.pools.pool("acct-a").idle_conns())
            )
            third = await turn(
                ws, create(previous_response_id=response_id(second), items=[user_message("again")])
            )
        finally:
            await ws.close()
        after = await gw.metrics()
    assert call_id and terminal(third)["type"] == "response.completed"
    events = len(first) + len(second) + len(third)

    def delta(series: str) -> float:
        return value(after, series) - value(before, series)

    assert delta('gateway_turns_total{mode="ctx_pool",outcome="completed"}') == 3
    assert delta('gateway_relayed_events_total{mode="ctx_pool"}') == events
    assert delta('gateway_ttft_seconds_count{mode="ctx_pool"}') == 3
    assert delta('gateway_added_latency_seconds_count{mode="ctx_pool"}') == events
    assert (
        delta(
            'gateway_normalizer_decisions_total{reason="injected_aborted_outputs",state="repaired"}'
        )
        == 1
    )
    assert delta('gateway_retry_attempts_total{reason="handshake_5xx"}') == 1
    assert (
        delta('gateway_recoveries_total{reason="socket_state_lost_replay",result="attempted"}') == 1
    )
    assert delta('gateway_pool_acquires_total{account="acct-a",kind="dialed"}') == 2
    assert delta('gateway_pool_acquires_total{account="acct-a",kind="reused"}') == 1
    assert value(after, 'gateway_pool_connections{account="acct-a",state="leased"}') == 0
    assert value(after, "gateway_retry_exhausted_total") == 0


async def test_payload_logging_is_sampled_and_truncated(
    sim: SimProcess, caplog: pytest.LogCaptureFixture
) -> None:
    async with serve(sim, telemetry={"log_payload_sample_rate": 0.0, "log_format": "text"}) as gw:
        ws = await open_ws(gw.ws_url, auth_headers())
        try:
            await turn(ws, create("x" * 1_000_000))
        finally:
            await ws.close()
        assert gw.ctx.payload_sampler.serialized == 0  # nothing rendered when nothing is logged
    async with serve(
        sim,
        telemetry={
            "log_payload_sample_rate": 1.0,
            "log_payload_max_bytes": 512,
            "log_format": "text",
        },
    ) as gw:
        ws = await open_ws(gw.ws_url, auth_headers())
        with caplog.at_level(logging.INFO, logger="gateway.ctx_pool"):
            try:
                await turn(ws, create("y" * 1_000_000))
            finally:
                await ws.close()
        assert gw.ctx.payload_sampler.serialized == 1
    record = next(r for r in caplog.records if getattr(r, "event", "") == "payload_sample")
    payload: str = record.payload  # type: ignore[attr-defined]
    assert record.bytes > 1_000_000  # type: ignore[attr-defined]
    assert payload.startswith(
        '{"type": "response.create"'
    )  # the client's own bytes and len(payload.split("...[truncated")[0]) == 512
    assert json.dumps("y" * 600) not in payload


# -- the log lines an operator reads -------------------------------------------------------
def records(caplog: pytest.LogCaptureFixture, event: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", "") == event]


def fields(record: logging.LogRecord) -> dict[str, Any]:
    """What the JSON line shows: the context's correlation ids plus the record's own."""
    line = JsonFormatter().format(record)
    out: dict[str, Any] = json.loads(line)
    return out


async def test_a_turn_writes_one_line_with_its_facts(
    sim: SimProcess, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with serve(sim) as gw:
        ws = await open_ws(gw.ws_url, auth_headers(session_id="sess-log-1"))
        try:
            events = await turn(ws, create("hello [[sim deltas=3]]"))
        finally:
            await ws.close()
        await eventually(lambda: bool(records(caplog, "turn")), what="the turn log line")
    (line,) = (fields(r) for r in records(caplog, "turn"))
    assert line["level"] == "info" and line["logger"] == "gateway.turn"
    assert line["session"] == "sess-log-1" and line["client_key"]
    assert line["mode"] == "ctx_pool" and line["outcome"] == "completed"
    assert line["account"] == "acct-a" and line["response_id"] == response_id(events)
    assert line["retries"] == 0 and line["fallback"] == "" and line["recovery"] == ""
    assert line["ttft_ms"] >= 0 and line["duration_ms"] >= line["ttft_ms"]
    assert line["input_tokens"] > 0 and line["output_tokens"] > 0
    # every line written while serving the socket carries the session
    served = [
        r
        for r in caplog.records
        if r.name.startswith("gateway.") and getattr(r, "event", "") != "startup"
    ]
    assert served and all(fields(r).get("session") == "sess-log-1" for r in served)


async def test_startup_summary_line(sim: SimProcess, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with serve(sim):
        pass
    (line,) = (fields(r) for r in records(caplog, "startup"))
    assert line["accounts_by_group"] == {"default": ["acct-a"]}
    assert line["statestore"] == "memory://" and line["mode"] == "ctx_pool"
    assert line["worker"] == "gw-test"
    assert "sk-gw-test" not in json.dumps(line) and "sk-sim-a" not in json.dumps(line)


async def test_a_denied_handshake_writes_its_reason(
    sim: SimProcess, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with serve(sim) as gw:
        with pytest.raises(InvalidStatus) as denied:
            await open_ws(gw.ws_url, {"Authorization": "Bearer wrong"})
    assert denied.value.response.status_code == 401
    (line,) = (fields(r) for r in records(caplog, "handshake_denied"))
    assert line["level"] == "info" and line["status"] == 401
    assert line["reason"] == "unauthorized" and line["auth_header"] == "present"
    assert line["remote"] == "127.0.0.1"
    assert "wrong" not in json.dumps(line)


async def test_a_426_denial_names_the_resolver_reason(
    sim: SimProcess, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with serve(sim, openai_ws={"force_http": True}) as gw:
        with pytest.raises(InvalidStatus) as denied:
            await open_ws(gw.ws_url, auth_headers())
    assert denied.value.response.status_code == 426
    (line,) = (fields(r) for r in records(caplog, "handshake_denied"))
    assert line["status"] == 426 and line["reason"] == "global_force_http"


async def test_a_failed_turn_writes_its_outcome_and_error(
    sim: SimProcess, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    sim.control.add_fault(kind="error_event", code="invalid_prompt", status=400)
    async with serve(sim) as gw:
        ws = await open_ws(gw.ws_url, auth_headers(session_id="sess-log-2"))
        try:
            events = await turn(ws, create("refused"))
        finally:
            await ws.close()
        await eventually(lambda: bool(records(caplog, "turn")), what="the turn log line")
    assert terminal(events)["type"] == "error"
    (line,) = (fields(r) for r in records(caplog, "turn"))
    assert line["session"] == "sess-log-2" and line["account"] == "acct-a"
    assert line["outcome"] not in ("completed", "http_completed")
    assert line["error_code"] == "invalid_prompt"
    [(span, _)] = spans_by_trace(gw.exporter)
    assert dict(span.attributes or {})["error.type"] == line["outcome"]


async def test_http_requests_write_one_line_each_and_are_not_fallbacks(
    sim: SimProcess, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    body = {"model": "gpt-test", "input": "hi", "stream": False}
    async with serve(sim) as gw:
        before = await gw.metrics()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.port}") as client:
            refused = await client.post("/v1/responses", json=body)
            relayed = await client.post(
                "/v1/responses", json=body, headers=auth_headers(session_id="sess-http")
            )
        after = await gw.metrics()
    assert refused.status_code == 401 and relayed.status_code == 200
    first, second = (fields(r) for r in records(caplog, "http_request"))
    assert first["status"] == 401 and first["outcome"] == "refused"
    assert first["error_code"] == "invalid_api_key"
    assert second["status"] == 200 and second["outcome"] == "relayed"
    assert second["account"] == "acct-a" and second["session"] == "sess-http"
    assert (
        value(after, "gateway_http_requests_total") - value(before, "gateway_http_requests_total")
        == 1
    )
    fallbacks = [
        line for line in after.splitlines() if line.startswith("gateway_http_fallbacks_total")
    ]
    assert fallbacks and all(line.endswith(" 0.0") for line in fallbacks)


async def test_metrics_endpoint_can_be_switched_off(sim: SimProcess) -> None:
    async with serve(sim, telemetry={"metrics_enabled": False}) as gw:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.port}") as client:
            assert (await client.get("/metrics")).status_code == 404
            assert (await client.get("/healthz")).status_code == 200


async def test_series_exist_before_traffic(sim: SimProcess) -> None:
    async with serve(sim) as gw:
        metrics = await gw.metrics()
    for series in (
        'gateway_turns_total{mode="ctx_pool",outcome="completed"} 0.0',
        'gateway_turns_total{mode="ctx_pool",outcome="retry_exhausted"} 0.0',
        'gateway_http_fallbacks_total{reason="closed_policy"} 0.0',
        'gateway_retry_attempts_total{reason="dial_error"} 0.0',
        'gateway_handshakes_total{result="unauthorized"} 0.0',
        'gateway_statestore_errors_total{op="bind"} 0.0',
        'gateway_pool_connections{account="acct-a",state="idle"} 0.0',
        'gateway_pool_acquires_total{account="acct-a",kind="dialed"} 0.0',
        'gateway_ttft_seconds_count{mode="ctx_pool"} 0.0',
    ):
        assert series in metrics, series
    assert 'state="total"' not in metrics
    assert "process_resident_memory_bytes" in metrics
