"""gateway.recovery: failure classification, the recovery matrix backoff."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field

import pytest

from gateway.recovery import (
    MAX_REPAIRS,
    Action,
    Failure,
    RetryPolicy,
    TurnAttempts,
    classify_error_event,
    classify_exception,
    next_action,
    repair_pairing,
)
from gateway.turn import UpstreamErrorInfo
from gateway.upstream.ws import (
    DialError,
    HandshakeRejected,
    MessageTooBig,
    UpstreamClosed,
    UpstreamProtocolError,
)
from normalizer import RequestSnapshot, decode_request, encode_request
from pool import DialFailed, PoolExhausted


def rejected(status: int) -> HandshakeRejected:
    return HandshakeRejected(status, {"content-type": "application/json"}, b'{"error":{}}')


def dial_failed(cause: BaseException | None) -> DialFailed:
    err = DialFailed("acct-a", "dial to account acct-a failed")
    err.__cause__ = cause
    return err


# -- classify_exception -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "failure"),
    [
        (rejected(500), Failure.HANDSHAKE_5XX),
        (rejected(502), Failure.HANDSHAKE_5XX),
        (rejected(503), Failure.HANDSHAKE_5XX),
        (rejected(429), Failure.HANDSHAKE_RATE_LIMIT),
        (rejected(401), Failure.HANDSHAKE_POLICY),
        (rejected(403), Failure.HANDSHAKE_POLICY),
        (rejected(426), Failure.HANDSHAKE_POLICY),
        (UpstreamClosed(1008, "policy"), Failure.CLOSED_POLICY),
        (UpstreamClosed(1009, "too big"), Failure.TOO_BIG),
        (UpstreamClosed(1011, "internal"), Failure.CLOSED_TRANSIENT),
        (UpstreamClosed(1012, "restart"), Failure.CLOSED_TRANSIENT),
        (UpstreamClosed(1013, "try later"), Failure.CLOSED_TRANSIENT),
        (UpstreamClosed(1006, "connection lost"), Failure.CLOSED_TRANSIENT),
        (UpstreamClosed(1000), Failure.CLOSED_TRANSIENT),  # a close before the terminal event
        (TimeoutError(), Failure.TIMEOUT),
        (DialError("connect failed"), Failure.DIAL),
        (ConnectionRefusedError(111, "refused"), Failure.DIAL),
        (UpstreamProtocolError("bad frame"), Failure.CLOSED_TRANSIENT),
        (PoolExhausted("queue full"), Failure.POOL_EXHAUSTED),
    ],
)
def test_classify_exception(exc: BaseException, failure: Failure) -> None:
    assert classify_exception(exc) is failure


def test_message_too_big_is_not_retried_as_transient() -> None:
    # BUG: see report — MessageTooBig (raised by recv, the socket closed 1009) is not an
    # UpstreamClosed, so it falls through to CLOSED_TRANSIENT and the turn is retried.
    assert classify_exception(MessageTooBig("upstream message over 1024 bytes")) is Failure.TOO_BIG


@pytest.mark.parametrize(
    ("cause", "failure"),
    [
        (rejected(500), Failure.HANDSHAKE_5XX),
        (rejected(429), Failure.HANDSHAKE_RATE_LIMIT),
        (rejected(401), Failure.HANDSHAKE_POLICY),
        (DialError("refused"), Failure.DIAL),
        (TimeoutError(), Failure.TIMEOUT),
        (UpstreamClosed(1008), Failure.CLOSED_POLICY),
        (None, Failure.DIAL),
    ],
)
def test_pool_dial_failure_is_classified_by_its_cause(
    cause: BaseException | None, failure: Failure
) -> None:
    assert classify_exception(dial_failed(cause)) is failure


# Failures a fresh turn retries on another socket: the socket or the upstream had a
# passing problem, not the request.
RETRIED = [
    Failure.DIAL,
    Failure.HANDSHAKE_5XX,
    Failure.CLOSED_TRANSIENT,
    Failure.TIMEOUT,
    Failure.CONNECTION_LIMIT,
    Failure.ERROR_TRANSIENT,
]


@pytest.mark.parametrize("failure", list(Failure))
def test_a_first_failure_is_retried_only_when_it_is_passing(failure: Failure) -> None:
    action = decide(failure, can_align=True, has_transcript=True)
    assert (action is Action.RETRY) == (failure in RETRIED)


# -- classify_error_event -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "message", "failure"),
    [
        (
            400,
            "previous_response_not_found",
            "Previous response was not found.",
            Failure.PREVIOUS_NOT_FOUND,
        ),
        (400, None, "Previous response with id 'resp_1' not found.", Failure.PREVIOUS_NOT_FOUND),
        (400, None, "No tool output found for function call call_1.", Failure.TOOL_OUTPUT_MISSING),
        (None, "websocket_connection_limit_reached", "limit", Failure.CONNECTION_LIMIT),
        (500, "server_error", "The server had an error", Failure.ERROR_TRANSIENT),
        (503, None, "overloaded", Failure.ERROR_TRANSIENT),
        (None, "server_is_overloaded", "busy", Failure.ERROR_TRANSIENT),
        (None, "internal_error", "oops", Failure.ERROR_TRANSIENT),
        (400, "invalid_request_error", "Invalid 'input[0]'", Failure.ERROR_FINAL),
        (400, None, "Unsupported parameter: 'foo'", Failure.ERROR_FINAL),
        (None, None, "", Failure.ERROR_FINAL),
    ],
)
def test_classify_error_event(
    status: int | None, code: str | None, message: str, failure: Failure
) -> None:
    err = UpstreamErrorInfo(status=status, code=code, message=message, frame="{}")
    assert classify_error_event(err) is failure


# -- next_action: single decisions ------------------------------------------------------------

POLICY = RetryPolicy(max_attempts=4, initial_s=0.1, max_s=2.0, jitter=0.2, budget_s=5.0)


def decide(
    failure: Failure,
    *,
    attempts: int = 1,
    tried: set[Action] | None = None,
    replayed: set[Failure] | None = None,
    elapsed_s: float = 0.0,
    next_backoff_s: float = 0.1,
    can_align: bool = False,
    has_transcript: bool = False,
    recovery_enabled: bool = True,
    policy: RetryPolicy = POLICY,
    repairs: int = 0,
    can_failover: bool = False,
) -> Action:
    state = TurnAttempts(
        attempts=attempts, tried=tried or set(), replayed=replayed or set(), repairs=repairs
    )
    return next_action(
        failure,
        state,
        policy,
        elapsed_s=elapsed_s,
        next_backoff_s=next_backoff_s,
        can_align=can_align,
        has_transcript=has_transcript,
        recovery_enabled=recovery_enabled,
        can_failover=can_failover,
    )


PNF = Failure.PREVIOUS_NOT_FOUND
TOM = Failure.TOOL_OUTPUT_MISSING
ORPHAN = Failure.ORPHAN_OUTPUT


@pytest.mark.parametrize(
    ("failure", "kwargs", "action"),
    [
        # previous_response_not_found: align once, then replay once, then fail
        (PNF, {"can_align": True, "has_transcript": True}, Action.ALIGN),
        (PNF, {"can_align": True, "has_transcript": False}, Action.ALIGN),
        (PNF, {"can_align": True, "has_transcript": True, "tried": {Action.ALIGN}}, Action.REPLAY),
        (PNF, {"can_align": False, "has_transcript": True}, Action.REPLAY),
        (PNF, {"can_align": False, "has_transcript": False}, Action.FAIL),
        (PNF, {"can_align": True, "tried": {Action.ALIGN}}, Action.FAIL),
        (
            PNF,
            {"can_align": True, "has_transcript": True, "tried": {Action.ALIGN}, "replayed": {PNF}},
            Action.FAIL,
        ),
        (PNF, {"can_align": True, "has_transcript": True, "recovery_enabled": False}, Action.FAIL),
        # tool output missing: replay once, then answer the named call "aborted" a bounded
        # number of times, then fail; never relay, never align
        (TOM, {"has_transcript": True}, Action.REPLAY),
        (TOM, {"has_transcript": True, "can_align": True}, Action.REPLAY),
        (TOM, {"has_transcript": True, "replayed": {TOM}}, Action.ABORT_MISSING_OUTPUT),
        (TOM, {"has_transcript": False}, Action.ABORT_MISSING_OUTPUT),
        (TOM, {"has_transcript": False, "repairs": MAX_REPAIRS}, Action.FAIL),
        (TOM, {"has_transcript": True, "recovery_enabled": False}, Action.FAIL),
        # an output whose call the upstream never saw: drop it and resend, a bounded
        # number of times, then the upstream's own error
        (ORPHAN, {}, Action.DROP_ORPHAN_OUTPUT),
        (ORPHAN, {"repairs": MAX_REPAIRS - 1}, Action.DROP_ORPHAN_OUTPUT),
        (ORPHAN, {"repairs": MAX_REPAIRS}, Action.RELAY_ERROR),
        (ORPHAN, {"recovery_enabled": False}, Action.RELAY_ERROR),
        # policy failures: one fast fallback to HTTP
        (Failure.HANDSHAKE_POLICY, {}, Action.FALLBACK_HTTP),
        (Failure.CLOSED_POLICY, {}, Action.FALLBACK_HTTP),
        (Failure.CLOSED_POLICY, {"tried": {Action.FALLBACK_HTTP}}, Action.FAIL),
        (Failure.HANDSHAKE_POLICY, {"tried": {Action.FALLBACK_HTTP}}, Action.FAIL),
        # the upstream rejected the request itself: its own error goes to the client
        (Failure.ERROR_FINAL, {}, Action.RELAY_ERROR),
        (Failure.ERROR_FINAL, {"attempts": 3, "has_transcript": True}, Action.RELAY_ERROR),
        # a limited account is never retried: the turn moves to another account, or the
        # client is told when to come back
        (Failure.HANDSHAKE_RATE_LIMIT, {"can_failover": True}, Action.FAILOVER),
        (Failure.RATE_LIMITED, {"can_failover": True, "attempts": 3}, Action.FAILOVER),
        (Failure.HANDSHAKE_RATE_LIMIT, {}, Action.FAIL),
        (Failure.RATE_LIMITED, {"has_transcript": True}, Action.FAIL),
        # neither retried nor relayed
        (Failure.TOO_BIG, {}, Action.FAIL),
        (Failure.POOL_EXHAUSTED, {}, Action.FAIL),
    ],
)
def test_next_action_matrix(failure: Failure, kwargs: dict[str, object], action: Action) -> None:
    assert decide(failure, **kwargs) is action  # type: ignore[arg-type]


@pytest.mark.parametrize("failure", RETRIED)
def test_transient_retries_until_max_attempts(failure: Failure) -> None:
    for attempts in (1, 2, 3):
        assert decide(failure, attempts=attempts) is Action.RETRY
    assert decide(failure, attempts=4) is Action.FAIL
    assert decide(failure, attempts=5) is Action.FAIL


@pytest.mark.parametrize("failure", RETRIED)
def test_transient_stops_when_the_next_backoff_would_overrun_the_budget(failure: Failure) -> None:
    assert decide(failure, elapsed_s=4.5, next_backoff_s=0.4) is Action.RETRY
    assert decide(failure, elapsed_s=4.5, next_backoff_s=0.6) is Action.FAIL
    assert decide(failure, elapsed_s=5.1, next_backoff_s=0.0) is Action.FAIL


def test_zero_budget_means_only_attempts_cap() -> None:
    unlimited = RetryPolicy(max_attempts=3, initial_s=0.1, max_s=1.0, jitter=0.0, budget_s=0.0)
    assert decide(Failure.DIAL, elapsed_s=1e6, policy=unlimited) is Action.RETRY
    assert decide(Failure.DIAL, attempts=3, policy=unlimited) is Action.FAIL


# -- next_action: whole turns, driven the way the turn loop drives it ------------------------


@dataclass
class Loop:
    """Mimics ctx_pool's bookkeeping around next_action for a scripted series of failures."""

    can_align: bool = True
    has_transcript: bool = True
    recovery_enabled: bool = True
    policy: RetryPolicy = field(default_factory=lambda: POLICY)
    backoff_s: float = 0.1

    def run(self, failures: list[Failure]) -> list[Action]:
        state = TurnAttempts()
        elapsed = 0.0
        actions: list[Action] = []
        can_align = self.can_align
        for failure in failures:
            state.attempts += 1
            action = next_action(
                failure,
                state,
                self.policy,
                elapsed_s=elapsed,
                next_backoff_s=self.backoff_s,
                can_align=can_align,
                has_transcript=self.has_transcript,
                recovery_enabled=self.recovery_enabled,
            )
            state.tried.add(action)
            actions.append(action)
            if action is Action.RETRY:
                state.retries += 1
                elapsed += self.backoff_s
            elif action is Action.ALIGN:
                can_align = False  # previous_response_id now equals the session's last
            elif action is Action.REPLAY:
                state.replayed.add(failure)
            else:
                break  # FAIL / RELAY_ERROR / FALLBACK_HTTP end the WebSocket attempts
        return actions


A = Action


@pytest.mark.parametrize(
    ("loop", "failures", "actions"),
    [
        (Loop(), [PNF, PNF, PNF], [A.ALIGN, A.REPLAY, A.FAIL]),
        (Loop(can_align=False), [PNF, PNF], [A.REPLAY, A.FAIL]),
        (Loop(has_transcript=False), [PNF, PNF], [A.ALIGN, A.FAIL]),
        (Loop(can_align=False, has_transcript=False), [PNF], [A.FAIL]),
        (Loop(recovery_enabled=False), [PNF], [A.FAIL]),
        (Loop(), [TOM, TOM], [A.REPLAY, A.ABORT_MISSING_OUTPUT]),
        (Loop(has_transcript=False), [TOM], [A.ABORT_MISSING_OUTPUT]),
        (Loop(has_transcript=False, recovery_enabled=False), [TOM], [A.FAIL]),
        # a transient failure after an align still retries, within the same attempt cap
        (
            Loop(),
            [PNF, Failure.DIAL, Failure.DIAL, Failure.DIAL],
            [A.ALIGN, A.RETRY, A.RETRY, A.FAIL],
        ),
        (
            Loop(),
            [Failure.CLOSED_TRANSIENT] * 5,
            [A.RETRY, A.RETRY, A.RETRY, A.FAIL],
        ),
        (Loop(), [Failure.TIMEOUT, Failure.ERROR_FINAL], [A.RETRY, A.RELAY_ERROR]),
        (Loop(), [Failure.HANDSHAKE_5XX, Failure.HANDSHAKE_POLICY], [A.RETRY, A.FALLBACK_HTTP]),
        (
            Loop(
                policy=RetryPolicy(max_attempts=10, initial_s=1, max_s=1, jitter=0, budget_s=2.5),
                backoff_s=1.0,
            ),
            [Failure.DIAL] * 10,
            [A.RETRY, A.RETRY, A.FAIL],
        ),
    ],
)
def test_turn_level_recovery_sequences(
    loop: Loop, failures: list[Failure], actions: list[Action]
) -> None:
    assert loop.run(failures) == actions


def test_tool_output_missing_never_relays_the_upstream_error() -> None:
    for has_transcript in (True, False):
        for recovery_enabled in (True, False):
            for attempts in (1, 4, 9):
                action = decide(
                    TOM,
                    attempts=attempts,
                    has_transcript=has_transcript,
                    recovery_enabled=recovery_enabled,
                    replayed={TOM} if attempts > 1 else set(),
                )
                assert action is not Action.RELAY_ERROR


# -- RetryPolicy.backoff ---------------------------------------------------------------------


def test_backoff_without_jitter_is_exponential_and_capped() -> None:
    policy = RetryPolicy(max_attempts=10, initial_s=0.12, max_s=2.0, jitter=0.0, budget_s=5.0)
    rng = random.Random(7)
    got = [policy.backoff(n, rng) for n in range(1, 9)]
    assert got == pytest.approx([0.12, 0.24, 0.48, 0.96, 1.92, 2.0, 2.0, 2.0])
    assert policy.backoff(0, rng) == pytest.approx(0.12)  # retry 0 is treated as the first


def test_backoff_jitter_stays_within_the_ratio() -> None:
    policy = RetryPolicy(max_attempts=10, initial_s=0.1, max_s=1.0, jitter=0.25, budget_s=5.0)
    rng = random.Random(12345)
    for retry in range(1, 8):
        base = min(1.0, 0.1 * 2 ** (retry - 1))
        samples = [policy.backoff(retry, rng) for _ in range(300)]
        assert all(base * 0.75 - 1e-12 <= s <= base * 1.25 + 1e-12 for s in samples)
        # jitter really spreads the delays over most of the band
        assert min(samples) < base * 0.85 and max(samples) > base * 1.15


def test_backoff_is_reproducible_with_a_seeded_rng() -> None:
    policy = RetryPolicy(max_attempts=4, initial_s=0.12, max_s=2.0, jitter=0.2, budget_s=5.0)
    first = [policy.backoff(n, random.Random(99)) for n in range(1, 6)]
    second = [policy.backoff(n, random.Random(99)) for n in range(1, 6)]
    assert first == second


def test_backoff_zero_initial_is_zero() -> None:
    policy = RetryPolicy(max_attempts=4, initial_s=0.0, max_s=2.0, jitter=0.5, budget_s=5.0)
    rng = random.Random(1)
    assert [policy.backoff(n, rng) for n in range(1, 5)] == [0.0, 0.0, 0.0, 0.0]


def test_backoff_never_negative_with_full_jitter() -> None:
    policy = RetryPolicy(max_attempts=4, initial_s=0.1, max_s=1.0, jitter=1.0, budget_s=5.0)
    rng = random.Random(3)
    assert all(0.0 <= policy.backoff(n % 6 + 1, rng) <= 2.0 for n in range(500))


# -- repair_pairing: the upstream named a broken call/output pair ------------------------------


def _request(items: list[dict[str, object]]) -> RequestSnapshot:
    return decode_request(json.dumps({"type": "response.create", "input": items}))


def _upstream_error(message: str) -> UpstreamErrorInfo:
    return UpstreamErrorInfo(status=400, code=None, message=message, frame="{}")


def _ids(request: RequestSnapshot) -> list[tuple[str, str | None]]:
    return [(item.type, item.call_id) for item in request.items]


USER = {"type": "message", "role": "user", "content": "go on"}


def test_orphan_output_named_by_the_upstream_is_classified_and_dropped() -> None:
    error = _upstream_error("No tool call found for function call output with call_id call_x.")
    assert classify_error_event(error) is Failure.ORPHAN_OUTPUT
    request = _request(
        [
            {"type": "function_call_output", "call_id": "call_x", "output": "stale"},
            {"type": "function_call_output", "call_id": "call_y", "output": "ok"},
            USER,
        ]
    )
    repaired = repair_pairing(request, error)
    assert repaired is not None
    assert _ids(repaired) == [("function_call_output", "call_y"), ("message", None)]
    assert b"call_x" not in encode_request(repaired)


def test_custom_tool_orphan_output_is_dropped_too() -> None:
    error = _upstream_error("No tool call found for custom tool call output with call_id c9.")
    request = _request([{"type": "custom_tool_call_output", "call_id": "c9", "output": "x"}, USER])
    repaired = repair_pairing(request, error)
    assert repaired is not None and _ids(repaired) == [("message", None)]


def test_orphan_not_in_this_request_is_not_repaired() -> None:
    error = _upstream_error("No tool call found for function call output with call_id call_x.")
    assert repair_pairing(_request([USER]), error) is None


def test_missing_output_for_a_previous_call_gets_an_aborted_answer_first() -> None:
    error = _upstream_error("No tool output found for function call call_7.")
    assert classify_error_event(error) is Failure.TOOL_OUTPUT_MISSING
    repaired = repair_pairing(_request([USER]), error)
    assert repaired is not None
    assert _ids(repaired) == [("function_call_output", "call_7"), ("message", None)]
    first = json.loads(bytes(repaired.items[0].raw))
    assert first == {"type": "function_call_output", "call_id": "call_7", "output": "aborted"}


def test_missing_output_for_a_call_in_the_request_is_answered_right_after_it() -> None:
    error = _upstream_error("No tool output found for custom tool call c2.")
    call = {"type": "custom_tool_call", "call_id": "c2", "name": "apply_patch", "input": "x"}
    repaired = repair_pairing(_request([USER, call, USER]), error)
    assert repaired is not None
    assert _ids(repaired) == [
        ("message", None),
        ("custom_tool_call", "c2"),
        ("custom_tool_call_output", "c2"),
        ("message", None),
    ]


def test_missing_output_already_answered_is_not_repaired_again() -> None:
    error = _upstream_error("No tool output found for function call call_7.")
    answered = {"type": "function_call_output", "call_id": "call_7", "output": "ok"}
    assert repair_pairing(_request([answered, USER]), error) is None
    assert repair_pairing(_request([USER]), _upstream_error("server exploded")) is None


@pytest.mark.parametrize(
    ("status", "code", "message"),
    [
        (429, None, "Too many requests"),
        (400, "insufficient_quota", "You exceeded your current quota."),
        (403, "usage_limit_reached", "The usage limit has been reached"),
        (None, None, "Rate limit reached for gpt-5 in organization org-x. Try again in 2s."),
    ],
)
def test_rate_limit_and_quota_errors_are_one_kind(
    status: int | None, code: str | None, message: str
) -> None:
    error = UpstreamErrorInfo(status=status, code=code, message=message, frame="{}")
    assert classify_error_event(error) is Failure.RATE_LIMITED
