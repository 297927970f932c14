"""FaultBook: times, matching, skip, probability, give-back (pure)."""

from __future__ import annotations

import pytest

from sim.faults import FaultBook, FaultRule, Occasion

WS_A = Occasion("key-a", "ws", True, "hello world")


def test_times_are_used_up() -> None:
    book = FaultBook()
    rule = book.add(FaultRule(kind="silence", times=2))
    assert book.take("silence", WS_A) is rule
    assert book.take("silence", WS_A) is rule
    assert book.take("silence", WS_A) is None
    assert (rule.times, rule.fired, book.fired_by_kind) == (0, 2, {"silence": 2})


def test_default_transport_per_kind() -> None:
    book = FaultBook()
    book.add(FaultRule(kind="http_status"))
    book.add(FaultRule(kind="error_event"))
    assert book.take("http_status", WS_A) is None
    assert book.take("http_status", Occasion("key-a", "http")) is not None
    assert book.take("error_event", Occasion("key-a", "http")) is None
    assert book.take("error_event", WS_A) is not None


def test_match_fields() -> None:
    book = FaultBook()
    book.add(FaultRule(kind="silence", account_key="key-b"))
    book.add(FaultRule(kind="silence", generate=False))
    book.add(FaultRule(kind="silence", match_text="nope"))
    assert book.take("silence", WS_A) is None
    assert book.take("silence", Occasion("key-b")) is not None


def test_skip_then_fire_and_give_back() -> None:
    book = FaultBook()
    rule = book.add(FaultRule(kind="silence", skip=1))
    assert book.take("silence", WS_A) is None
    assert book.take("silence", WS_A) is rule
    book.give_back(rule)
    assert (rule.times, rule.fired, book.fired_by_kind["silence"]) == (1, 0, 0)


def test_probability_is_seeded_and_repeatable() -> None:
    def fired(seed: int) -> list[bool]:
        book = FaultBook(seed)
        book.add(FaultRule(kind="silence", probability=0.5, times=1000))
        return [book.take("silence", WS_A) is not None for _ in range(40)]

    assert fired(7) == fired(7)
    assert 0 < sum(fired(7)) < 40


def test_bad_rules_are_refused() -> None:
    book = FaultBook()
    with pytest.raises(ValueError, match="unknown fault kind"):
        book.add(FaultRule(kind="nope"))
    with pytest.raises(ValueError, match="mode"):
        book.add(FaultRule(kind="silence", mode="explode"))
    assert book.remove("fault-99") is False
