"""Fault rules: the failures peers hit in production, injected on demand.

A rule fires on matching occasions until its ``times`` are used up. Match fields narrow
where it fires: ``account_key``, ``transport`` ("ws", "http" or "any"; default "http" for
``http_status`` and "ws" for every other kind), ``generate`` (False = warm-ups only,
True = real responses only), ``match_text`` (a substring of the last user message),
``skip`` (let that many matching occasions pass first) and ``probability`` (fire on that
fraction of the matching occasions, from a seeded generator so runs repeat).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import msgspec

FAULT_KINDS = frozenset(
    {
        "handshake_status",
        "close_after_events",
        "error_event",
        "previous_response_not_found",
        "tool_output_missing",
        "silence",
        "first_byte_delay_ms",
        "max_conn_age_s",
        "close_after_terminal",
        "http_status",
    }
)


class FaultRule(msgspec.Struct, kw_only=True):
    kind: str
    id: str = ""
    # match
    account_key: str | None = None
    transport: str | None = None
    generate: bool | None = None
    match_text: str | None = None
    skip: int = 0
    probability: float | None = None
    times: int = 1
    # parameters (each kind reads the ones it needs)
    after_events: int = 0
    status: int | None = None
    code: int | str | None = None  # a close code, or an error event's code
    message: str | None = None
    param: str | None = None
    retry_after: float | None = None
    delay_ms: float = 100.0
    age_s: float = 3600.0
    mode: str = "close"  # "close" (with ``code``) or "abort" (drop TCP, no close frame)
    duration_s: float = 60.0  # how long a silenced socket stays half-open before the TCP drop
    fired: int = 0


@dataclass(frozen=True)
class Occasion:
    """Where a rule might fire."""

    account_key: str
    transport: str = "ws"
    generate: bool = True
    text: str = ""


class FaultBook:
    def __init__(self, seed: int = 1234) -> None:
        self.rules: list[FaultRule] = []
        self.fired_by_kind: dict[str, int] = {}
        self._next_id = 0
        self._rng = random.Random(seed)
        self._seed = seed

    def add(self, rule: FaultRule) -> FaultRule:
        if rule.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {rule.kind!r}; known: {sorted(FAULT_KINDS)}")
        if rule.mode not in ("close", "abort"):
            raise ValueError("mode must be 'close' or 'abort'")
        if rule.transport not in (None, "ws", "http", "any"):
            raise ValueError("transport must be 'ws', 'http' or 'any'")
        self._next_id += 1
        rule.id = f"fault-{self._next_id}"
        self.rules.append(rule)
        return rule

    def remove(self, rule_id: str) -> bool:
        before = len(self.rules)
        self.rules = [r for r in self.rules if r.id != rule_id]
        return len(self.rules) != before

    def clear(self) -> None:
        self.rules.clear()
        self.fired_by_kind.clear()
        self._rng = random.Random(self._seed)

    def _matches(self, rule: FaultRule, occasion: Occasion) -> bool:
        transport = rule.transport or ("http" if rule.kind == "http_status" else "ws")
        if transport not in ("any", occasion.transport):
            return False
        if rule.account_key not in (None, occasion.account_key):
            return False
        if rule.generate is not None and rule.generate != occasion.generate:
            return False
        return rule.match_text is None or rule.match_text in occasion.text

    def take(
        self,
        kind: str,
        occasion: Occasion,
        when: Callable[[FaultRule], bool] | None = None,
    ) -> FaultRule | None:
        """The first live rule of ``kind`` that fires on this occasion (its use is counted)."""
        for rule in self.rules:
            if rule.kind != kind or rule.times <= 0 or not self._matches(rule, occasion):
                continue
            if when is not None and not when(rule):
                continue
            if rule.skip > 0:
                rule.skip -= 1
                continue
            if rule.probability is not None and self._rng.random() >= rule.probability:
                continue
            rule.times -= 1
            rule.fired += 1
            self.fired_by_kind[kind] = self.fired_by_kind.get(kind, 0) + 1
            return rule
        return None

    def give_back(self, rule: FaultRule) -> None:
        """A rule reserved for a response that ended before the rule's moment came."""
        rule.times += 1
        rule.fired -= 1
        self.fired_by_kind[rule.kind] -= 1
