"""Failure classification and the recovery matrix. Pure: no I/O, no clock.

Every way a turn can fail before its first event reached the client is reduced to a
``Failure`` kind; ``next_action`` maps it, with what was already tried, to one action.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from enum import StrEnum

from gateway.config import OpenAIWSConfig
from gateway.events import is_account_error
from gateway.turn import UpstreamErrorInfo
from gateway.upstream.ws import (
    DialError,
    HandshakeRejected,
    MessageTooBig,
    UpstreamClosed,
    UpstreamError,
)
from normalizer import RequestSnapshot, aborted_output
from pool import DialFailed, PoolExhausted

# Each pairing repair fixes one call id the upstream named; a request with more broken
# pairs than this is handed back to the client rather than resent again and again.
MAX_REPAIRS = 8


class Failure(StrEnum):
    DIAL = "dial_error"
    HANDSHAKE_5XX = "handshake_5xx"
    HANDSHAKE_RATE_LIMIT = "handshake_429"
    HANDSHAKE_POLICY = "handshake_policy"  # 401/403/426 and other 4xx
    CLOSED_TRANSIENT = "closed_transient"  # 1006/1011/1012/1013/...
    CLOSED_POLICY = "closed_policy"  # 1008
    TOO_BIG = "message_too_big"  # 1009
    TIMEOUT = "read_timeout"
    PREVIOUS_NOT_FOUND = "previous_response_not_found"
    TOOL_OUTPUT_MISSING = "tool_output_missing"
    ORPHAN_OUTPUT = "tool_call_missing"  # an output whose call the upstream never saw
    RATE_LIMITED = "rate_limited"  # error event 429 / quota: this account refuses work for now
    ACCOUNT_REFUSED = "account_refused"  # error event 401/403: the account itself is broken
    CONNECTION_LIMIT = "websocket_connection_limit_reached"
    ERROR_TRANSIENT = "upstream_server_error"
    ERROR_FINAL = "upstream_request_error"  # the upstream rejected the request itself
    POOL_EXHAUSTED = "pool_exhausted"


class Action(StrEnum):
    RETRY = "retry"  # same request, another socket, after backoff
    ALIGN = "align_previous_response_id"  # retry with previous_response_id = session's last
    REPLAY = "replay_full_transcript"  # drop previous_response_id, full transcript, fresh socket
    DROP_ORPHAN_OUTPUT = "drop_orphan_output"  # remove the output the upstream named, resend
    ABORT_MISSING_OUTPUT = "abort_missing_output"  # answer the named call "aborted", resend
    FALLBACK_HTTP = "fallback_http"  # one policy failure: same request over HTTP, cooldown
    FAILOVER = "failover_account"  # this account is limited: the turn moves to another one
    RELAY_ERROR = "relay_upstream_error"  # give the client the upstream's own error event
    FAIL = "fail"  # give the client the gateway's error event


TRANSIENT = frozenset(
    {
        Failure.DIAL,
        Failure.HANDSHAKE_5XX,
        Failure.CLOSED_TRANSIENT,
        Failure.TIMEOUT,
        Failure.CONNECTION_LIMIT,
        Failure.ERROR_TRANSIENT,
    }
)


def classify_exception(exc: BaseException) -> Failure:
    if isinstance(exc, PoolExhausted):
        return Failure.POOL_EXHAUSTED
    if isinstance(exc, DialFailed):
        exc = exc.__cause__ or exc
    if isinstance(exc, HandshakeRejected):
        if exc.status >= 500:
            return Failure.HANDSHAKE_5XX
        if exc.status == 429:
            return Failure.HANDSHAKE_RATE_LIMIT
        return Failure.HANDSHAKE_POLICY
    if isinstance(exc, UpstreamClosed):
        if exc.code == 1008:
            return Failure.CLOSED_POLICY
        if exc.code == 1009:
            return Failure.TOO_BIG
        return Failure.CLOSED_TRANSIENT
    if isinstance(exc, MessageTooBig):
        return Failure.TOO_BIG  # the socket was closed 1009; the same request would repeat it
    if isinstance(exc, TimeoutError):
        return Failure.TIMEOUT
    if isinstance(exc, DialError | OSError):
        return Failure.DIAL
    if isinstance(exc, UpstreamError):
        return Failure.CLOSED_TRANSIENT
    return Failure.DIAL


RATE_LIMITS = frozenset({Failure.HANDSHAKE_RATE_LIMIT, Failure.RATE_LIMITED})
# Failures that count against an account's transport health (enough in a row open it).
TRANSPORT_FAILURES = frozenset(
    {Failure.DIAL, Failure.HANDSHAKE_5XX, Failure.CLOSED_TRANSIENT, Failure.TIMEOUT}
)


def classify_error_event(err: UpstreamErrorInfo) -> Failure:
    if err.is_rate_limit:
        return Failure.RATE_LIMITED
    if is_account_error(err.status, err.code):
        return Failure.ACCOUNT_REFUSED
    if err.is_previous_not_found:
        return Failure.PREVIOUS_NOT_FOUND
    if err.is_tool_output_missing:
        return Failure.TOOL_OUTPUT_MISSING
    if err.orphan_output_call_id is not None:
        return Failure.ORPHAN_OUTPUT
    if err.is_connection_limit:
        return Failure.CONNECTION_LIMIT
    status = err.status or 0
    if status >= 500 or err.code in ("server_error", "internal_error", "server_is_overloaded"):
        return Failure.ERROR_TRANSIENT
    return Failure.ERROR_FINAL


def account_health_effect(failure: Failure) -> str | None:
    """What a failure says about the account that served the attempt: "rate_limited",
    "refused" (the account itself), "transport" (counts toward taking it out), or None."""
    if failure in RATE_LIMITS:
        return "rate_limited"
    if failure is Failure.ACCOUNT_REFUSED:
        return "refused"
    if failure in TRANSPORT_FAILURES or failure is Failure.ERROR_TRANSIENT:
        return "transport"
    return None


@dataclass(slots=True)
class RetryPolicy:
    max_attempts: int
    initial_s: float
    max_s: float
    jitter: float
    budget_s: float

    @classmethod
    def of(cls, ws: OpenAIWSConfig) -> RetryPolicy:
        return cls(
            max_attempts=ws.retry_max_attempts,
            initial_s=ws.retry_backoff_initial_ms / 1000,
            max_s=ws.retry_backoff_max_ms / 1000,
            jitter=ws.retry_jitter_ratio,
            budget_s=ws.retry_total_budget_ms / 1000,
        )

    def backoff(self, retry_number: int, rng: random.Random) -> float:
        """Exponential from ``initial_s``, capped at ``max_s``, with ±jitter."""
        if self.initial_s <= 0:
            return 0.0
        base = min(self.max_s, self.initial_s * (2 ** max(0, retry_number - 1)))
        spread = base * self.jitter
        return max(0.0, float(base + rng.uniform(-spread, spread)))


@dataclass(slots=True)
class TurnAttempts:
    """What one turn has tried so far."""

    attempts: int = 0
    retries: int = 0
    tried: set[Action] = field(default_factory=set)
    replayed: set[Failure] = field(default_factory=set)  # each failure kind gets one replay
    repairs: int = 0  # outputs dropped or injected after the upstream named them
    accounts: set[str] = field(default_factory=set)  # accounts the turn moved away from


def next_action(
    failure: Failure,
    state: TurnAttempts,
    policy: RetryPolicy,
    *,
    elapsed_s: float,
    next_backoff_s: float,
    can_align: bool,
    has_transcript: bool,
    recovery_enabled: bool = True,
    can_failover: bool = False,
) -> Action:
    """The recovery matrix. Only called while nothing has reached the client."""
    if failure in RATE_LIMITS:
        # Retrying a limited account only burns its quota further: move or give up.
        return Action.FAILOVER if can_failover else Action.FAIL
    if failure is Failure.ACCOUNT_REFUSED:
        return Action.FAILOVER if can_failover else Action.RELAY_ERROR
    if failure is Failure.PREVIOUS_NOT_FOUND:
        if recovery_enabled and can_align and Action.ALIGN not in state.tried:
            return Action.ALIGN
        if recovery_enabled and has_transcript and failure not in state.replayed:
            return Action.REPLAY
        return Action.FAIL  # the client gets previous_response_not_found and replays itself
    if failure is Failure.TOOL_OUTPUT_MISSING:
        if recovery_enabled and has_transcript and failure not in state.replayed:
            return Action.REPLAY
        if recovery_enabled and state.repairs < MAX_REPAIRS:
            return Action.ABORT_MISSING_OUTPUT
        return Action.FAIL  # never the raw "No tool output found": Codex treats it as fatal
    if failure is Failure.ORPHAN_OUTPUT:
        if recovery_enabled and state.repairs < MAX_REPAIRS:
            return Action.DROP_ORPHAN_OUTPUT
        return Action.RELAY_ERROR
    if failure in (Failure.HANDSHAKE_POLICY, Failure.CLOSED_POLICY):
        return Action.FALLBACK_HTTP if Action.FALLBACK_HTTP not in state.tried else Action.FAIL
    if failure is Failure.ERROR_FINAL or failure is Failure.TOO_BIG:
        return Action.RELAY_ERROR if failure is Failure.ERROR_FINAL else Action.FAIL
    if failure is Failure.POOL_EXHAUSTED:
        return Action.FAIL
    if failure in TRANSIENT:
        if state.attempts >= policy.max_attempts:
            return Action.FAIL
        if policy.budget_s > 0 and elapsed_s + next_backoff_s > policy.budget_s:
            return Action.FAIL
        return Action.RETRY
    return Action.FAIL


def repair_pairing(request: RequestSnapshot, error: UpstreamErrorInfo) -> RequestSnapshot | None:
    """The request with the pairing fault the upstream named fixed, or None when there is
    nothing to fix here (the named item is not in this request).

    "No tool call found for ... output with call_id X": the output for X is dropped.
    "No tool output found for function call X": an "aborted" output for X is added, right
    after the call when the call is in this request, else first (the call belongs to the
    previous response).
    """
    items = request.items
    orphan = error.orphan_output_call_id
    if orphan is not None:
        kept = [i for i in items if not (i.call_id == orphan and i.type.endswith("_output"))]
        return None if len(kept) == len(items) else request.with_items(kept)
    missing = error.missing_output_call
    if missing is None:
        return None
    kind, call_id = missing
    if any(i.call_id == call_id and i.type.endswith("_output") for i in items):
        return None
    for index, item in enumerate(items):
        if item.call_id == call_id:
            answer = aborted_output(item.type, call_id)
            return request.with_items((*items[: index + 1], answer, *items[index + 1 :]))
    return request.with_items((aborted_output(kind, call_id), *items))
