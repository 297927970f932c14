"""gateway.tracing: the standard OTEL_* variables, span naming and error.type."""

from __future__ import annotations

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.config import TelemetryConfig
from gateway.logs import log_fields
from gateway.tracing import NO_SPAN, Tracing, mark_error, tracing_wanted


def _otlp_endpoint(tracing: Tracing) -> str:
    assert tracing.provider is not None
    processors = tracing.provider._active_span_processor._span_processors
    (processor,) = processors
    assert isinstance(processor, BatchSpanProcessor)
    exporter = processor.span_exporter
    assert isinstance(exporter, OTLPSpanExporter)
    return str(exporter._endpoint)


def test_no_endpoint_anywhere_means_no_tracing() -> None:
    tracing = Tracing(TelemetryConfig(), "gw-1", env={})
    assert not tracing.enabled and tracing.provider is None


def test_spans_with_tracing_off_are_one_shared_no_op() -> None:
    tracing = Tracing(TelemetryConfig(), "gw-1", env={})
    turn = tracing.turn_span("chat", None)
    child = tracing.child("pool.acquire", **{"gateway.account": "a"})
    assert turn is NO_SPAN and child is NO_SPAN  # nothing built per turn
    with turn as outer, child as inner:
        assert not outer.is_recording() and not inner.is_recording()
        outer.set_attribute("gen_ai.request.model", "gpt-5")  # accepted, ignored


def test_an_exception_leaves_a_no_op_span_unswallowed() -> None:
    tracing = Tracing(TelemetryConfig(), "gw-1", env={})
    with pytest.raises(KeyError), tracing.child("statestore.lookup"):
        raise KeyError("boom")


def test_child_spans_nest_under_the_turn_span_when_tracing_is_on() -> None:
    exporter = InMemorySpanExporter()
    tracing = Tracing(TelemetryConfig(), "gw-1", exporter=exporter, env={})
    with tracing.turn_span("chat", None), tracing.child("upstream.write", **{"gateway.bytes": 7}):
        pass
    child, turn = exporter.get_finished_spans()
    assert child.parent is not None and child.parent.span_id == turn.context.span_id
    assert child.attributes is not None and child.attributes["gateway.bytes"] == 7


def test_the_otlp_endpoint_variable_alone_turns_the_exporter_on() -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}
    tracing = Tracing(TelemetryConfig(), "gw-1", env=env)
    try:
        assert tracing.enabled
        assert tracing_wanted(TelemetryConfig(), env, exporter=False)
    finally:
        tracing.shutdown()


def test_the_config_endpoint_wins_over_the_variables() -> None:
    cfg = TelemetryConfig(otlp_endpoint="http://from-config:4318/v1/traces")
    tracing = Tracing(cfg, "gw-1", env={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://env:4318"})
    try:
        assert _otlp_endpoint(tracing) == "http://from-config:4318/v1/traces"
    finally:
        tracing.shutdown()


def test_sdk_disabled_and_tracing_disabled_win() -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}
    assert not Tracing(TelemetryConfig(), "gw-1", env=env).enabled
    off = TelemetryConfig(tracing_enabled=False)
    assert not Tracing(off, "gw-1", env={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c"}).enabled


def test_service_name_comes_from_otel_service_name_when_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "gw-from-env")
    tracing = Tracing(
        TelemetryConfig(), "gw-1", exporter=InMemorySpanExporter(), env={"OTEL_SERVICE_NAME": "x"}
    )
    assert tracing.provider is not None
    attrs = tracing.provider.resource.attributes
    assert attrs["service.name"] == "gw-from-env" and attrs["service.instance.id"] == "gw-1"
    default = Tracing(TelemetryConfig(), "gw-2", exporter=InMemorySpanExporter(), env={})
    assert default.provider is not None
    assert default.provider.resource.attributes["service.name"] == "responses-ws-gateway"


def test_turn_span_is_named_after_the_model_and_carries_the_conversation() -> None:
    exporter = InMemorySpanExporter()
    tracing = Tracing(TelemetryConfig(), "gw-1", exporter=exporter, env={})
    with log_fields(session="sess-7"), tracing.turn_span("chat", None) as span:
        span.set_attribute("gen_ai.request.model", "gpt-5")
        mark_error(span, "retry_exhausted")
    with tracing.turn_span("chat", None) as span:
        mark_error(span, "upstream said: no such thing")
    first, second = exporter.get_finished_spans()
    assert first.name == "chat gpt-5"
    assert first.attributes is not None and second.attributes is not None
    assert first.attributes["gen_ai.conversation.id"] == "sess-7"
    assert first.attributes["gen_ai.provider.name"] == "openai"
    assert first.attributes["error.type"] == "retry_exhausted"
    assert second.name == "chat"  # no model known
    assert "gen_ai.conversation.id" not in second.attributes
    assert second.attributes["error.type"] == "_OTHER"  # free text is not a type
