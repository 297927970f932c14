"""OpenTelemetry: one span per turn with GenAI semantic-convention attributes.

The tracer provider belongs to the app (not the global one), so tests can attach an
in-memory exporter. With no exporter configured ``turn_span`` and ``child`` return one
shared no-op context manager yielding a non-recording span: nothing is allocated per
turn and nothing happens per event.

The standard ``OTEL_*`` variables are honoured: ``OTEL_EXPORTER_OTLP_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` turn the exporter on when the config names no
endpoint (headers, timeout, compression come from the exporter's own variables),
``OTEL_SDK_DISABLED=true`` turns tracing off, ``OTEL_SERVICE_NAME`` and
``OTEL_RESOURCE_ATTRIBUTES`` shape the resource, ``OTEL_TRACES_SAMPLER`` picks the sampler.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Final

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.trace import INVALID_SPAN, Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from gateway.config import TelemetryConfig
from gateway.logs import current_log_fields

_propagator = TraceContextTextMapPropagator()
OPERATION = "chat"
PROVIDER = "openai"


class _NoSpan(AbstractContextManager[Span]):
    """What ``turn_span``/``child`` return when tracing is off: one shared object whose
    enter and exit do nothing (a generator-based context manager costs µs per use)."""

    __slots__ = ()

    def __enter__(self) -> Span:
        return INVALID_SPAN

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


NO_SPAN: Final = _NoSpan()


def _env_endpoint(env: Mapping[str, str]) -> bool:
    return bool(
        env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    )


def tracing_wanted(cfg: TelemetryConfig, env: Mapping[str, str], exporter: bool) -> bool:
    if not cfg.tracing_enabled or env.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    return exporter or bool(cfg.otlp_endpoint) or _env_endpoint(env)


class Tracing:
    def __init__(
        self,
        cfg: TelemetryConfig,
        instance_id: str,
        exporter: SpanExporter | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        env = os.environ if env is None else env
        self.provider: TracerProvider | None = None
        self._tracer: trace.Tracer | None = None
        if not tracing_wanted(cfg, env, exporter is not None):
            return
        attributes: dict[str, str] = {"service.instance.id": instance_id}
        if not env.get("OTEL_SERVICE_NAME"):
            attributes["service.name"] = cfg.service_name
        self.provider = TracerProvider(resource=Resource.create(attributes))
        if exporter is not None:
            self.provider.add_span_processor(SimpleSpanProcessor(exporter))
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            # No endpoint argument: the exporter reads the OTEL_EXPORTER_OTLP_* variables.
            otlp = (
                OTLPSpanExporter(endpoint=cfg.otlp_endpoint)
                if cfg.otlp_endpoint
                else OTLPSpanExporter()
            )
            self.provider.add_span_processor(BatchSpanProcessor(otlp))
        self._tracer = self.provider.get_tracer("responses-ws-gateway")

    @property
    def enabled(self) -> bool:
        return self._tracer is not None

    def parent_context(self, headers: Mapping[str, str]) -> otel_context.Context | None:
        """An incoming ``traceparent`` on the handshake becomes the parent of every turn."""
        if self._tracer is None or "traceparent" not in headers:
            return None
        return _propagator.extract(dict(headers))

    def turn_span(
        self, operation: str, parent: otel_context.Context | None
    ) -> AbstractContextManager[Span]:
        """The turn's span, named ``{operation} {model}`` once the model is known."""
        if self._tracer is None:
            return NO_SPAN
        return self._turn_span(self._tracer, operation, parent)

    @staticmethod
    @contextlib.contextmanager
    def _turn_span(
        tracer: trace.Tracer, operation: str, parent: otel_context.Context | None
    ) -> Iterator[Span]:
        with tracer.start_as_current_span(operation, context=parent, kind=SpanKind.SERVER) as span:
            _turn_attributes(span, operation)
            try:
                yield span
            finally:
                _name_after_model(span, operation)

    def open_turn(self, operation: str, parent: otel_context.Context | None) -> Span:
        """A turn span that outlives the handler (a streamed HTTP turn): not made current
        (enter it with ``trace.use_span(span, end_on_exit=False)``), ended by ``close_turn``."""
        if self._tracer is None:
            return INVALID_SPAN
        span = self._tracer.start_span(operation, context=parent, kind=SpanKind.SERVER)
        _turn_attributes(span, operation)
        return span

    def close_turn(self, span: Span, operation: str) -> None:
        if span is INVALID_SPAN:
            return
        _name_after_model(span, operation)
        span.end()

    def child(
        self, name: str, **attributes: str | int | float | bool
    ) -> AbstractContextManager[Span]:
        """A child of the current span; free when tracing is off."""
        if self._tracer is None:
            return NO_SPAN
        return self._child(self._tracer, name, attributes)

    @staticmethod
    @contextlib.contextmanager
    def _child(
        tracer: trace.Tracer, name: str, attributes: Mapping[str, str | int | float | bool]
    ) -> Iterator[Span]:
        with tracer.start_as_current_span(name, kind=SpanKind.INTERNAL) as span:
            for key, value in attributes.items():
                span.set_attribute(key, value)
            yield span

    def shutdown(self) -> None:
        if self.provider is not None:
            self.provider.shutdown()


def _turn_attributes(span: Span, operation: str) -> None:
    """What every turn span says from its start: the operation, the provider, the session."""
    span.set_attribute("gen_ai.operation.name", operation)
    span.set_attribute("gen_ai.provider.name", PROVIDER)
    session = current_log_fields().get("session")
    if isinstance(session, str) and session:
        span.set_attribute("gen_ai.conversation.id", session)


def _name_after_model(span: Span, operation: str) -> None:
    attributes = getattr(span, "attributes", None) or {}
    model = attributes.get("gen_ai.request.model") or attributes.get("gen_ai.response.model")
    if isinstance(model, str) and model:
        span.update_name(f"{operation} {model}")


def mark_error(span: Span, description: str) -> None:
    """A failed turn: ERROR status and ``error.type`` (the turn's outcome or error code)."""
    if span.is_recording():
        span.set_status(Status(StatusCode.ERROR, description))
        span.set_attribute("error.type", _error_type(description))


def _error_type(description: str) -> str:
    # error.type is a low-cardinality class: an outcome or code, not a free-text message.
    if description and len(description) <= 64 and description.replace("_", "").isalnum():
        return description
    return "_OTHER"
