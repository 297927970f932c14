"""What one turn did: its outcome (a metric label) and the facts its span and log carry."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from opentelemetry.trace import Span

from gateway.tracing import mark_error
from gateway.turn import TurnOutcome, TurnTracker


class Outcome(StrEnum):
    """How a turn ended, as the ``outcome`` label of ``gateway_turns_total``."""

    # the upstream's terminal event reached the client (over WebSocket, or HTTP fallback)
    COMPLETED = "completed"
    FAILED = "failed"
    INCOMPLETE = "incomplete"
    CANCELLED = "cancelled"
    ERROR = "error"  # an upstream error event mid-stream was the terminal
    HTTP_COMPLETED = "http_completed"
    HTTP_FAILED = "http_failed"
    HTTP_INCOMPLETE = "http_incomplete"
    HTTP_CANCELLED = "http_cancelled"
    HTTP_ERROR = "http_error"
    # the gateway ended the turn with an error event of its own (or the upstream's)
    UPSTREAM_ERROR = "upstream_error"  # the upstream rejected the request itself
    INTERRUPTED = "interrupted"  # the upstream socket died after events reached the client
    INVALID_REQUEST = "invalid_request"
    NO_ACCOUNT = "no_account"
    PREVIOUS_NOT_FOUND = "previous_response_not_found"
    POOL_EXHAUSTED = "pool_exhausted"
    RATE_LIMITED = "rate_limited"  # every account of the group is cooling down
    RETRY_EXHAUSTED = "retry_exhausted"
    CLIENT_GONE = "client_gone"  # the client left before anything was sent upstream

    @classmethod
    def of(cls, upstream: TurnOutcome | None, *, http: bool = False) -> Outcome:
        """The outcome of a turn whose terminal event came from the upstream."""
        return _OF_UPSTREAM[http][upstream or TurnOutcome.ERROR]

    @property
    def succeeded(self) -> bool:
        return self in (Outcome.COMPLETED, Outcome.HTTP_COMPLETED)


# Outcome.of as a table: an enum lookup by value costs µs, and it runs once per turn.
_OF_UPSTREAM: dict[bool, dict[TurnOutcome, Outcome]] = {
    False: {t: Outcome(t.value) for t in TurnOutcome},
    True: {t: Outcome(f"http_{t.value}") for t in TurnOutcome},
}


@dataclass(slots=True)
class TurnFacts:
    """Filled in as the turn goes; read by its span, its log line and the metrics."""

    account_id: str = ""
    conn_reused: bool | None = None
    normalizer_state: str = ""
    normalizer_reason: str = ""
    retries: int = 0
    failovers: int = 0
    fallback: str = ""
    recovery: str = ""
    drained: bool = False
    tracker: TurnTracker | None = None


def annotate_turn(
    span: Span, facts: TurnFacts, outcome: Outcome, *, instance: str, group: str, mode: str
) -> None:
    span.set_attribute("gateway.instance", instance)
    span.set_attribute("gateway.group", group)
    span.set_attribute("gateway.mode", mode)
    span.set_attribute("gateway.outcome", outcome.value)
    span.set_attribute("gateway.account", facts.account_id)
    if facts.conn_reused is not None:
        span.set_attribute("gateway.conn_reused", facts.conn_reused)
    span.set_attribute("gateway.normalizer.state", facts.normalizer_state)
    span.set_attribute("gateway.normalizer.reason", facts.normalizer_reason)
    span.set_attribute("gateway.retries", facts.retries)
    span.set_attribute("gateway.failovers", facts.failovers)
    span.set_attribute("gateway.fallback", facts.fallback)
    span.set_attribute("gateway.recovery", facts.recovery)
    span.set_attribute("gateway.drained_after_disconnect", facts.drained)
    tracker = facts.tracker
    if tracker is not None:
        if tracker.response_id:
            span.set_attribute("gen_ai.response.id", tracker.response_id)
        if tracker.model:
            span.set_attribute("gen_ai.response.model", tracker.model)
        span.set_attribute("gen_ai.usage.input_tokens", tracker.input_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", tracker.output_tokens)
        if tracker.ttft_s is not None:
            span.set_attribute("gateway.ttft_ms", round(tracker.ttft_s * 1000, 3))
    if not outcome.succeeded:
        mark_error(span, outcome.value)
