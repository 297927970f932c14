"""A turn's outcome label and the facts its span carries."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from gateway.config import TelemetryConfig
from gateway.forward.facts import Outcome, TurnFacts, annotate_turn
from gateway.tracing import Tracing
from gateway.turn import TurnOutcome, TurnTracker


@pytest.mark.parametrize(
    ("upstream", "http", "expected"),
    [
        (TurnOutcome.COMPLETED, False, "completed"),
        (TurnOutcome.INCOMPLETE, False, "incomplete"),
        (TurnOutcome.ERROR, False, "error"),
        (TurnOutcome.COMPLETED, True, "http_completed"),
        (TurnOutcome.CANCELLED, True, "http_cancelled"),
        (None, False, "error"),
        (None, True, "http_error"),
    ],
)
def test_the_outcome_of_an_upstream_terminal(
    upstream: TurnOutcome | None, http: bool, expected: str
) -> None:
    assert Outcome.of(upstream, http=http) == expected


def test_only_completed_turns_succeeded() -> None:
    assert {o for o in Outcome if o.succeeded} == {Outcome.COMPLETED, Outcome.HTTP_COMPLETED}


@pytest.fixture
def tracing() -> Iterator[tuple[Tracing, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    tracing = Tracing(TelemetryConfig(), "gw-1", exporter=exporter, env={})
    yield tracing, exporter
    tracing.shutdown()


def annotated(
    tracing: tuple[Tracing, InMemorySpanExporter], facts: TurnFacts, outcome: Outcome
) -> ReadableSpan:
    tracer, exporter = tracing
    with tracer.turn_span("chat", None) as span:
        annotate_turn(span, facts, outcome, instance="gw-1", group="g", mode="ctx_pool")
    [finished] = exporter.get_finished_spans()
    return finished


def test_a_completed_turn_span_carries_its_facts(
    tracing: tuple[Tracing, InMemorySpanExporter],
) -> None:
    tracker = TurnTracker(started_at=10.0)
    tracker.observe('{"type":"response.created","response":{"id":"resp_1","model":"m"}}')
    tracker.first_event_at = 10.25
    tracker.observe(
        '{"type":"response.completed","response":{"id":"resp_1","status":"completed",'
        '"usage":{"input_tokens":7,"output_tokens":3}}}'
    )
    facts = TurnFacts(
        account_id="acct-0",
        conn_reused=True,
        normalizer_state="aligned",
        normalizer_reason="store_false",
        retries=1,
        failovers=2,
        fallback="http",
        recovery="align",
        tracker=tracker,
    )
    span = annotated(tracing, facts, Outcome.COMPLETED)
    attrs = dict(span.attributes or {})
    assert {k: attrs[k] for k in attrs if k.startswith(("gateway.", "gen_ai.response"))} == {
        "gateway.instance": "gw-1",
        "gateway.group": "g",
        "gateway.mode": "ctx_pool",
        "gateway.outcome": "completed",
        "gateway.account": "acct-0",
        "gateway.conn_reused": True,
        "gateway.normalizer.state": "aligned",
        "gateway.normalizer.reason": "store_false",
        "gateway.retries": 1,
        "gateway.failovers": 2,
        "gateway.fallback": "http",
        "gateway.recovery": "align",
        "gateway.drained_after_disconnect": False,
        "gateway.ttft_ms": 250.0,
        "gen_ai.response.id": "resp_1",
        "gen_ai.response.model": "m",
    }
    assert attrs["gen_ai.usage.input_tokens"] == 7
    assert attrs["gen_ai.usage.output_tokens"] == 3
    assert span.status.status_code is not StatusCode.ERROR


def test_a_failed_turn_without_a_response_marks_the_span_an_error(
    tracing: tuple[Tracing, InMemorySpanExporter],
) -> None:
    span = annotated(tracing, TurnFacts(account_id="acct-0"), Outcome.RETRY_EXHAUSTED)
    attrs = dict(span.attributes or {})
    assert "gateway.conn_reused" not in attrs
    assert "gen_ai.response.id" not in attrs and "gateway.ttft_ms" not in attrs
    assert span.status.status_code is StatusCode.ERROR
    assert attrs["error.type"] == "retry_exhausted"


def test_a_tracker_without_ids_or_events_adds_only_usage(
    tracing: tuple[Tracing, InMemorySpanExporter],
) -> None:
    span = annotated(tracing, TurnFacts(tracker=TurnTracker()), Outcome.CLIENT_GONE)
    attrs = dict(span.attributes or {})
    assert attrs["gen_ai.usage.input_tokens"] == 0
    assert "gen_ai.response.id" not in attrs and "gen_ai.response.model" not in attrs
    assert "gateway.ttft_ms" not in attrs
