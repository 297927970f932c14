"""Sans-io turn tracking: upstream event frames in, turn facts out.

The I/O loop feeds every upstream frame to ``TurnTracker.observe`` and relays it; the
tracker decides when the turn is over and keeps what the gateway must remember
(response id, pending tool calls, output items for the transcript, usage, errors).
Only created/terminal/error frames get a typed decode; deltas cost one prefix check.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from enum import StrEnum

import msgspec

from gateway.events import (
    RESPONSE_TERMINAL_TYPES,
    ErrorEventPeek,
    ResponsePeek,
    event_type,
    peek_error,
    peek_response,
    peek_response_object,
    pending_calls,
)

_ORPHAN_OUTPUT = re.compile(r"No tool call found for [a-z ]*output with call_id ([^\s.]+)", re.I)
_MISSING_OUTPUT = re.compile(
    r"No tool output found for ((?:custom )?tool call|function call) ([^\s.]+)", re.I
)


_STATUS_TERMINAL = {
    "completed": "response.completed",
    "failed": "response.failed",
    "incomplete": "response.incomplete",
    "cancelled": "response.cancelled",
}


class TurnOutcome(StrEnum):
    COMPLETED = "completed"
    FAILED = "failed"
    INCOMPLETE = "incomplete"
    CANCELLED = "cancelled"
    ERROR = "error"  # an `error` event ended the turn


RATE_LIMIT_CODES = frozenset(
    {"rate_limit_exceeded", "insufficient_quota", "usage_limit_reached", "usage_not_included"}
)


@dataclass(slots=True)
class UpstreamErrorInfo:
    status: int | None
    code: str | None
    message: str
    frame: str | bytes
    headers: dict[str, str] | None = None

    @property
    def is_rate_limit(self) -> bool:
        """The account is rate-limited or out of quota (another account may serve)."""
        if self.status == 429 or self.code in RATE_LIMIT_CODES:
            return True
        msg = self.message.lower()
        return "rate limit" in msg or "quota" in msg

    @property
    def is_previous_not_found(self) -> bool:
        msg = self.message.lower()
        return self.code == "previous_response_not_found" or (
            "previous response" in msg and "not found" in msg
        )

    @property
    def is_tool_output_missing(self) -> bool:
        return "no tool output found" in self.message.lower()

    @property
    def orphan_output_call_id(self) -> str | None:
        """The call id of "No tool call found for ... output with call_id X": the request
        carries an output whose call the upstream never saw."""
        match = _ORPHAN_OUTPUT.search(self.message)
        return match.group(1) if match else None

    @property
    def missing_output_call(self) -> tuple[str, str] | None:
        """(call kind, call id) of "No tool output found for function call X"."""
        match = _MISSING_OUTPUT.search(self.message)
        if match is None:
            return None
        kind = (
            "custom_tool_call" if match.group(1).lower().startswith("custom") else "function_call"
        )
        return kind, match.group(2)

    @property
    def is_connection_limit(self) -> bool:
        return self.code == "websocket_connection_limit_reached"

    @classmethod
    def from_peek(cls, peek: ErrorEventPeek, frame: str | bytes) -> UpstreamErrorInfo:
        err = peek.error
        return cls(
            status=peek.status if peek.status is not None else peek.status_code,
            code=err.code if err else None,
            message=(err.message or "") if err else "",
            frame=frame,
            headers=peek.headers,
        )


@dataclass(slots=True)
class TurnTracker:
    """Facts about one upstream response, built from the frames as they pass."""

    started_at: float = field(default_factory=time.perf_counter)
    events: int = 0
    first_event_at: float | None = None
    response_id: str | None = None
    model: str | None = None
    outcome: TurnOutcome | None = None
    status: str | None = None
    output: list[msgspec.Raw] = field(default_factory=list)
    pending: dict[str, str] = field(default_factory=dict)
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    error: UpstreamErrorInfo | None = None

    @property
    def done(self) -> bool:
        return self.outcome is not None

    def observe(self, frame: str | bytes) -> str:
        """Account for one upstream frame; returns its event type."""
        self.events += 1
        if self.first_event_at is None:
            self.first_event_at = time.perf_counter()
        try:
            etype = event_type(frame)
        except msgspec.DecodeError:
            return ""
        if etype == "response.created":
            resp = peek_response(frame)
            self.response_id = resp.id or self.response_id
            self.model = resp.model
        elif etype in RESPONSE_TERMINAL_TYPES:
            self._terminal(peek_response(frame), etype)
        elif etype == "error":
            self.error = UpstreamErrorInfo.from_peek(peek_error(frame), frame)
            self.outcome = TurnOutcome.ERROR
        return etype

    def observe_response(self, body: str | bytes) -> None:
        """Account for a whole response object (a non-streamed HTTP turn's JSON body)."""
        self.events += 1
        if self.first_event_at is None:
            self.first_event_at = time.perf_counter()
        try:
            resp = peek_response_object(body)
        except msgspec.DecodeError:
            self.outcome = TurnOutcome.ERROR
            return
        etype = _STATUS_TERMINAL.get(resp.status, "response.completed")
        self._terminal(resp, etype)

    def _terminal(self, resp: ResponsePeek, etype: str) -> None:
        self.response_id = resp.id or self.response_id
        self.model = resp.model or self.model
        self.status = resp.status
        self.output = resp.output
        self.pending = pending_calls(resp.output)
        if resp.usage is not None:
            self.input_tokens = resp.usage.input_tokens
            self.output_tokens = resp.usage.output_tokens
            self.total_tokens = resp.usage.total_tokens
        if etype == "response.completed" or etype == "response.done":
            self.outcome = TurnOutcome.COMPLETED
        elif etype == "response.failed":
            self.outcome = TurnOutcome.FAILED
        elif etype == "response.incomplete":
            self.outcome = TurnOutcome.INCOMPLETE
        else:
            self.outcome = TurnOutcome.CANCELLED

    @property
    def ttft_s(self) -> float | None:
        if self.first_event_at is None:
            return None
        return self.first_event_at - self.started_at
