"""OpenTelemetry: one span per turn with GenAI semantic-convention attributes (R-23).

The tracer provider belongs to the app (not the global one), so tests can attach an
in-memory exporter. With no exporter configured every call returns a non-recording
span: a few attribute no-ops per turn, nothing per event.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.trace import INVALID_SPAN, Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from gateway.config import TelemetryConfig

_propagator = TraceContextTextMapPropagator()


class Tracing:
    def __init__(
        self, cfg: TelemetryConfig, instance_id: str, exporter: SpanExporter | None = None
    ) -> None:
        self.provider: TracerProvider | None = None
        self._tracer: trace.Tracer | None = None
        if not cfg.tracing_enabled or (exporter is None and not cfg.otlp_endpoint):
            return
        resource = Resource.create(
            {"service.name": cfg.service_name, "service.instance.id": instance_id}
        )
        self.provider = TracerProvider(resource=resource)
        if exporter is not None:
            self.provider.add_span_processor(SimpleSpanProcessor(exporter))
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            self.provider.add_span_processor(
                BatchSpanProcessor(OTLPSpanExporter(endpoint=cfg.otlp_endpoint))
            )
        self._tracer = self.provider.get_tracer("responses-ws-gateway")

    @property
    def enabled(self) -> bool:
        return self._tracer is not None

    def parent_context(self, headers: Mapping[str, str]) -> otel_context.Context | None:
        """An incoming ``traceparent`` on the handshake becomes the parent of every turn."""
        if self._tracer is None or "traceparent" not in headers:
            return None
        return _propagator.extract(dict(headers))

    @contextlib.contextmanager
    def turn_span(self, operation: str, parent: otel_context.Context | None) -> Iterator[Span]:
        if self._tracer is None:
            yield INVALID_SPAN
            return
        with self._tracer.start_as_current_span(
            operation, context=parent, kind=SpanKind.SERVER
        ) as span:
            span.set_attribute("gen_ai.operation.name", "chat")
            span.set_attribute("gen_ai.system", "openai")
            yield span

    @contextlib.contextmanager
    def child(self, name: str, **attributes: str | int | float | bool) -> Iterator[Span]:
        """A child of the current span; free when tracing is off."""
        if self._tracer is None:
            yield INVALID_SPAN
            return
        with self._tracer.start_as_current_span(name, kind=SpanKind.INTERNAL) as span:
            for key, value in attributes.items():
                span.set_attribute(key, value)
            yield span

    def shutdown(self) -> None:
        if self.provider is not None:
            self.provider.shutdown()


def mark_error(span: Span, description: str) -> None:
    if span.is_recording():
        span.set_status(Status(StatusCode.ERROR, description))
