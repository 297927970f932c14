"""The prewarm gate alone, on an injected clock: cooldown between rounds, the failure
window, the shut period and its reopening."""

from __future__ import annotations

from pool import PoolConfig
from pool.prewarm import PrewarmGate
from tests.support import FakeClock

CFG = PoolConfig(
    prewarm_cooldown_s=2.0,
    prewarm_failure_window_s=10.0,
    prewarm_failure_threshold=3,
    prewarm_reopen_s=30.0,
)


def make_gate() -> tuple[PrewarmGate, FakeClock]:
    clock = FakeClock()
    return PrewarmGate(CFG, clock), clock


def test_a_fresh_gate_is_open_and_lets_a_round_start() -> None:
    gate, _ = make_gate()
    assert gate.is_open() and gate.may_start() and gate.trips == 0


def test_the_cooldown_runs_from_the_start_of_a_round() -> None:
    gate, clock = make_gate()
    gate.round_started()
    assert not gate.may_start()
    assert gate.is_open()  # the cooldown does not stop a running round from dialing
    clock.advance(1.999)
    assert not gate.may_start()
    clock.advance(0.001)
    assert gate.may_start()


def test_a_long_round_restarts_the_cooldown_when_it_ends() -> None:
    gate, clock = make_gate()
    gate.round_started()
    clock.advance(5.0)  # the round took longer than the cooldown
    gate.round_finished()
    assert not gate.may_start()
    clock.advance(2.0)
    assert gate.may_start()


def test_the_cooldown_also_runs_from_the_end_of_a_short_round() -> None:
    gate, clock = make_gate()
    gate.round_started()
    clock.advance(0.5)
    gate.round_finished()  # ends 0.5 s in: the next round may start 2.5 s after the first
    clock.advance(1.5)
    assert not gate.may_start()  # 2 s after the start is not enough
    clock.advance(0.499)
    assert not gate.may_start()
    clock.advance(0.001)
    assert gate.may_start()


def test_threshold_failures_within_the_window_shut_the_gate_until_reopen() -> None:
    gate, clock = make_gate()
    gate.dial_failed()
    clock.advance(4.0)
    gate.dial_failed()
    assert gate.is_open() and gate.trips == 0
    clock.advance(4.0)
    gate.dial_failed()  # the third within 10 s
    assert not gate.is_open() and not gate.may_start() and gate.trips == 1
    clock.advance(29.999)
    assert not gate.is_open()
    clock.advance(0.001)
    assert gate.is_open() and gate.may_start()


def test_failures_older_than_the_window_do_not_count() -> None:
    gate, clock = make_gate()
    gate.dial_failed()
    clock.advance(6.0)
    gate.dial_failed()
    clock.advance(6.0)  # the first failure is now 12 s old
    gate.dial_failed()
    assert gate.is_open() and gate.trips == 0
    clock.advance(1.0)
    gate.dial_failed()  # three within the last 10 s: 6, 12, 13
    assert not gate.is_open() and gate.trips == 1


def test_a_successful_dial_forgets_earlier_failures() -> None:
    gate, _ = make_gate()
    gate.dial_failed()
    gate.dial_failed()
    gate.dial_succeeded()
    gate.dial_failed()
    assert gate.is_open() and gate.trips == 0


def test_after_a_trip_the_count_starts_over() -> None:
    gate, clock = make_gate()
    for _ in range(3):
        gate.dial_failed()
    assert gate.trips == 1
    clock.advance(30.0)
    gate.dial_failed()
    gate.dial_failed()
    assert gate.is_open() and gate.trips == 1
    gate.dial_failed()
    assert not gate.is_open() and gate.trips == 2


def test_the_gate_shut_while_cooling_down_opens_only_when_both_have_passed() -> None:
    gate, clock = make_gate()
    gate.round_started()
    for _ in range(3):
        gate.dial_failed()
    clock.advance(2.0)  # cooldown over, gate still shut
    assert not gate.may_start()
    clock.advance(28.0)
    assert gate.may_start()
