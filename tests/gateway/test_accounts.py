"""Account health and scheduling, on an injected clock."""

from __future__ import annotations

import random

import pytest

from gateway.accounts import AccountState, HealthPolicy, Scheduler, retry_after_s
from gateway.config import Account


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def scheduler(*weights: int, policy: HealthPolicy | None = None) -> tuple[Scheduler, Clock]:
    clock = Clock()
    accounts = {
        f"a{i}": Account(id=f"a{i}", group="g", weight=w) for i, w in enumerate(weights or (1, 1))
    }
    changes: list[tuple[str, AccountState]] = []
    sched = Scheduler(
        accounts,
        policy=policy or HealthPolicy(jitter=0.0),
        clock=clock,
        rng=random.Random(7),
        on_change=lambda a, s: changes.append((a, s)),
    )
    return sched, clock


@pytest.mark.parametrize(
    ("headers", "message", "expected"),
    [
        ({"Retry-After": "2"}, "", 2.0),
        ({"retry-after-ms": "250"}, "", 0.25),
        ({"retry-after-ms": "250", "retry-after": "9"}, "", 0.25),
        ({"x-ratelimit-reset-requests": "1.5s", "x-ratelimit-reset-tokens": "20s"}, "", 20.0),
        ({"x-ratelimit-reset-tokens": "250ms"}, "", 0.25),
        ({"x-ratelimit-reset-requests": "2m"}, "", 120.0),
        ({}, "Rate limit reached. Please try again in 20s.", 20.0),
        ({}, "Please try again in 350ms", 0.35),
        ({}, "try again in 1.5 seconds", 1.5),
        ({}, "Please try again in 3 minutes", 180.0),
        (None, "quota exceeded", None),
        ({"retry-after": "soon"}, "", None),
    ],
)
def test_retry_after_from_headers_or_message(
    headers: dict[str, str] | None, message: str, expected: float | None
) -> None:
    assert retry_after_s(headers, message) == expected


def test_new_conversations_go_to_the_least_loaded_account_by_weight() -> None:
    sched, _ = scheduler(1, 3)
    picks = []
    for _ in range(4):
        account = sched.pick("g")
        assert account is not None
        sched.begin(account.id)
        picks.append(account.id)
    # weight 3 takes three of four while a0 carries one
    assert sorted(picks) == ["a0", "a1", "a1", "a1"]


def test_a_continuation_stays_on_its_account_while_it_is_available() -> None:
    sched, _ = scheduler(1, 1)
    sched.begin("a1")
    sched.begin("a1")
    assert sched.pick("g", prefer="a1").id == "a1"  # type: ignore[union-attr]
    sched.rate_limited("a1", 5.0)
    assert sched.pick("g", prefer="a1").id == "a0"  # type: ignore[union-attr]


def test_a_rate_limited_account_cools_until_its_deadline_then_is_healthy() -> None:
    sched, clock = scheduler()
    until = sched.rate_limited("a0", 2.0)
    assert until == clock.now + 2.0
    assert sched.state("a0") is AccountState.COOLING
    assert sched.pick("g").id == "a1"  # type: ignore[union-attr]
    assert sched.earliest_available("g") == until
    clock.now += 1.999
    assert not sched.available("a0")
    clock.now += 0.001
    assert sched.available("a0") and sched.state("a0") is AccountState.HEALTHY


def test_cooldown_without_a_hint_backs_off_exponentially_and_is_capped() -> None:
    sched, clock = scheduler(policy=HealthPolicy(cooldown_initial_s=1, cooldown_max_s=5, jitter=0))
    waits = []
    for _ in range(5):
        waits.append(sched.rate_limited("a0") - clock.now)
        clock.now += waits[-1]
    assert waits == [1.0, 2.0, 4.0, 5.0, 5.0]
    sched.succeeded("a0")
    assert sched.rate_limited("a0") - clock.now == 1.0


def test_cooldown_hint_is_capped_too() -> None:
    sched, clock = scheduler(policy=HealthPolicy(cooldown_max_s=60))
    assert sched.rate_limited("a0", 3600) == clock.now + 60


def test_jittered_backoff_stays_within_its_band() -> None:
    sched, clock = scheduler(policy=HealthPolicy(cooldown_initial_s=10, jitter=0.2))
    wait = sched.rate_limited("a0") - clock.now
    assert 8.0 <= wait <= 12.0


def test_no_available_account_means_none() -> None:
    sched, clock = scheduler()
    sched.rate_limited("a0", 3)
    sched.rate_limited("a1", 1)
    assert sched.pick("g") is None
    assert sched.earliest_available("g") == clock.now + 1
    assert sched.pick("other-group") is None


def test_consecutive_transport_failures_open_the_account_then_one_probe() -> None:
    sched, clock = scheduler(policy=HealthPolicy(failure_threshold=3, probe_interval_s=10))
    for _ in range(2):
        sched.transport_failed("a0")
    assert sched.available("a0")
    sched.transport_failed("a0")
    assert sched.state("a0") is AccountState.OPEN and not sched.available("a0")
    clock.now += 10
    assert sched.state("a0") is AccountState.HALF_OPEN and sched.available("a0")
    sched.begin("a0")  # the probe
    assert not sched.available("a0")  # only one probe at a time
    sched.transport_failed("a0")
    sched.end("a0")
    assert sched.state("a0") is AccountState.OPEN
    clock.now += 10
    sched.begin("a0")
    sched.succeeded("a0")
    sched.end("a0")
    assert sched.state("a0") is AccountState.HEALTHY


def test_a_success_resets_the_failure_count() -> None:
    sched, _ = scheduler(policy=HealthPolicy(failure_threshold=2))
    sched.transport_failed("a0")
    sched.succeeded("a0")
    sched.transport_failed("a0")
    assert sched.state("a0") is AccountState.HEALTHY


def test_cooldowns_learned_from_another_instance_only_extend() -> None:
    sched, clock = scheduler()
    sched.cool_until("a0", clock.now - 1)
    assert sched.available("a0")
    sched.cool_until("a0", clock.now + 5)
    assert sched.until("a0") == clock.now + 5
    sched.cool_until("a0", clock.now + 2)
    assert sched.until("a0") == clock.now + 5
    sched.cool_until("unknown", clock.now + 5)


def test_accounts_that_cannot_serve_the_transport_come_last() -> None:
    sched, _ = scheduler(1, 1)
    sched.begin("a1")
    sched.begin("a1")
    chosen = sched.pick("g", usable=lambda a: a.id != "a0")
    assert chosen is not None and chosen.id == "a1"


def test_state_changes_are_reported() -> None:
    clock = Clock()
    seen: list[tuple[str, AccountState]] = []
    sched = Scheduler(
        {"a": Account(id="a", group="g")},
        policy=HealthPolicy(jitter=0),
        clock=clock,
        on_change=lambda a, s: seen.append((a, s)),
    )
    sched.rate_limited("a", 1)
    clock.now += 1
    sched.state("a")
    assert seen == [("a", AccountState.COOLING), ("a", AccountState.HEALTHY)]


def test_a_rate_limit_is_announced_with_its_deadline_but_a_learned_one_is_not() -> None:
    sched, clock = scheduler()
    announced: list[tuple[str, float]] = []
    sched.on_rate_limited = lambda account, until: announced.append((account, until))
    sched.rate_limited("a0", 2.0)
    sched.rate_limited("a0", 1.0)  # a shorter wait keeps the later deadline
    sched.cool_until("a1", clock.now + 7)  # another instance's news: not echoed back
    assert announced == [("a0", 1002.0), ("a0", 1002.0)]
