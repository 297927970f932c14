"""Which upstream account serves a turn: health per account and the scheduler.

Pure bookkeeping with an injected clock (no I/O), so every rule is unit-tested.

An account is
- ``healthy``: takes any turn;
- ``cooling`` until a deadline after the upstream said it is rate-limited or out of quota
  (the deadline comes from ``Retry-After`` / ``retry-after-ms`` / ``x-ratelimit-reset-*``
  or "try again in N s" in the message, else an exponential backoff with jitter, capped);
- ``open`` after ``failure_threshold`` consecutive transport failures (dial errors,
  handshake 5xx, dropped sockets); after ``probe_interval_s`` one turn is let through as
  a probe (``half_open``): success makes it healthy, failure opens it again.

New conversations go to the least-loaded available account by weight; a continuation
stays on its account while that account is available (upstream caches stay warm).
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from gateway.config import Account


class AccountState(StrEnum):
    HEALTHY = "healthy"
    COOLING = "cooling"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(slots=True)
class _Health:
    state: AccountState = AccountState.HEALTHY
    until: float = 0.0  # cooling / open: not available before this (monotonic seconds)
    limited_in_a_row: int = 0  # rate-limit answers since the last success (for backoff)
    failures_in_a_row: int = 0  # transport failures since the last success
    probing: bool = False  # half-open: the one probe turn is out


@dataclass(slots=True)
class HealthPolicy:
    cooldown_initial_s: float = 1.0
    cooldown_max_s: float = 300.0
    failure_threshold: int = 5
    probe_interval_s: float = 10.0
    jitter: float = 0.2


_TRY_AGAIN = re.compile(
    r"try again in\s+([0-9]+(?:\.[0-9]+)?)\s*(ms|s|sec|seconds?|m|min|minutes?)?", re.I
)
_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h)?\s*$")


def _duration_s(text: str) -> float | None:
    """ "20", "20s", "1.5s", "250ms", "2m" (the forms of the x-ratelimit-reset-* headers)."""
    match = _DURATION.match(text)
    if match is None:
        return None
    value = float(match.group(1))
    unit = match.group(2) or "s"
    return value * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[unit]


def retry_after_s(headers: Mapping[str, str] | None, message: str = "") -> float | None:
    """How long the upstream asked us to wait, if it said so anywhere we know to look."""
    if headers:
        lowered = {k.lower(): v for k, v in headers.items()}
        ms = lowered.get("retry-after-ms")
        if ms is not None:
            parsed = _duration_s(ms)
            if parsed is not None:
                return parsed / 1000.0
        seconds = lowered.get("retry-after")
        if seconds is not None:
            parsed = _duration_s(seconds)
            if parsed is not None:
                return parsed
        resets: list[float] = []
        for name in ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"):
            reset = _duration_s(lowered.get(name, ""))
            if reset is not None:
                resets.append(reset)
        if resets:
            return max(resets)
    match = _TRY_AGAIN.search(message)
    if match is None:
        return None
    amount = float(match.group(1))
    unit = (match.group(2) or "s").lower()
    if unit == "ms":
        return amount / 1000.0
    if unit.startswith("m"):
        return amount * 60.0
    return amount


@dataclass
class Scheduler:
    """Account health and choice for one process."""

    accounts: Mapping[str, Account]
    policy: HealthPolicy = field(default_factory=HealthPolicy)
    clock: Callable[[], float] = field(default=lambda: 0.0)
    rng: random.Random = field(default_factory=random.Random)
    on_change: Callable[[str, AccountState], None] | None = None
    # The account was rate-limited here, with its deadline (this clock): other instances
    # should hear of it. Not called for what another instance told us (``cool_until``).
    on_rate_limited: Callable[[str, float], None] | None = None
    active: dict[str, int] = field(default_factory=dict)
    _health: dict[str, _Health] = field(default_factory=dict)
    _groups: dict[str, list[Account]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for account in self.accounts.values():
            self._groups.setdefault(account.group, []).append(account)
            self._health[account.id] = _Health()
            self.active.setdefault(account.id, 0)

    # -- what we know -------------------------------------------------------------------
    def state(self, account_id: str) -> AccountState:
        health = self._health[account_id]
        now = self.clock()
        if health.state is AccountState.COOLING and now >= health.until:
            self._set(account_id, health, AccountState.HEALTHY)
        elif health.state is AccountState.OPEN and now >= health.until:
            self._set(account_id, health, AccountState.HALF_OPEN)
        return health.state

    def until(self, account_id: str) -> float | None:
        """When a cooling or open account may be used again (None: available now)."""
        state = self.state(account_id)
        if state in (AccountState.COOLING, AccountState.OPEN):
            return self._health[account_id].until
        return None

    def available(self, account_id: str) -> bool:
        state = self.state(account_id)
        if state is AccountState.HEALTHY:
            return True
        return state is AccountState.HALF_OPEN and not self._health[account_id].probing

    def earliest_available(self, group: str) -> float | None:
        times = [t for a in self._groups.get(group, []) if (t := self.until(a.id)) is not None]
        return min(times) if times else None

    def wait_s(self, group: str) -> int:
        """Whole seconds (rounded up, at least 1) until an account of the group frees up:
        what a client is told to wait when every account is limited."""
        earliest = self.earliest_available(group)
        return max(1, math.ceil(earliest - self.clock())) if earliest is not None else 1

    def group(self, group: str) -> list[Account]:
        return self._groups.get(group, [])

    # -- choosing -------------------------------------------------------------------------
    def pick(
        self,
        group: str,
        *,
        prefer: str | None = None,
        exclude: Collection[str] = (),
        usable: Callable[[Account], bool] | None = None,
    ) -> Account | None:
        """The preferred account if it is available, else the least-loaded available one
        (by weight); accounts that ``usable`` rejects come last. None: none available."""
        if prefer is not None and prefer not in exclude:
            account = self.accounts.get(prefer)
            if account is not None and account.group == group and self.available(prefer):
                return account
        excluded = set(exclude)
        best: Account | None = None
        best_key: tuple[int, float] | None = None
        for account in self._groups.get(group, []):
            if account.id in excluded or not self.available(account.id):
                continue
            rank = 0 if usable is None or usable(account) else 1
            key = (rank, self.active.get(account.id, 0) / account.weight)
            if best_key is None or key < best_key:
                best, best_key = account, key
        return best

    def begin(self, account_id: str) -> None:
        """A turn starts on the account (counts toward its load; takes the probe slot)."""
        self.active[account_id] = self.active.get(account_id, 0) + 1
        health = self._health[account_id]
        if self.state(account_id) is AccountState.HALF_OPEN:
            health.probing = True

    def end(self, account_id: str) -> None:
        self.active[account_id] = max(0, self.active.get(account_id, 0) - 1)
        self._health[account_id].probing = False

    # -- what the upstream told us ----------------------------------------------------------
    def succeeded(self, account_id: str) -> None:
        health = self._health[account_id]
        health.failures_in_a_row = 0
        health.limited_in_a_row = 0
        if health.state is not AccountState.HEALTHY:
            self._set(account_id, health, AccountState.HEALTHY)

    def rate_limited(self, account_id: str, wait_s: float | None = None) -> float:
        """The account refused work for now; returns the cooldown deadline."""
        health = self._health[account_id]
        health.limited_in_a_row += 1
        if wait_s is None:
            p = self.policy
            base = p.cooldown_initial_s * (2 ** (health.limited_in_a_row - 1))
            wait_s = base * (1 + self.rng.uniform(-p.jitter, p.jitter))
        wait_s = min(max(0.0, wait_s), self.policy.cooldown_max_s)
        health.until = max(health.until, self.clock() + wait_s)
        self._set(account_id, health, AccountState.COOLING)
        if self.on_rate_limited is not None:
            self.on_rate_limited(account_id, health.until)
        return health.until

    def cool_until(self, account_id: str, until: float) -> None:
        """Another instance said the account is cooling until ``until`` (this clock)."""
        health = self._health.get(account_id)
        if health is None or until <= self.clock() or until <= health.until:
            return
        health.until = until
        if health.state is AccountState.HEALTHY:
            self._set(account_id, health, AccountState.COOLING)

    def refused(self, account_id: str) -> None:
        """The upstream refused the account itself (bad key, no access): out of rotation
        at once, with a probe after ``probe_interval_s``."""
        health = self._health[account_id]
        health.until = self.clock() + self.policy.probe_interval_s
        health.probing = False
        self._set(account_id, health, AccountState.OPEN)

    def transport_failed(self, account_id: str) -> None:
        health = self._health[account_id]
        health.failures_in_a_row += 1
        reopened = self.state(account_id) is AccountState.HALF_OPEN
        if reopened or health.failures_in_a_row >= self.policy.failure_threshold:
            health.until = self.clock() + self.policy.probe_interval_s
            health.probing = False
            self._set(account_id, health, AccountState.OPEN)

    def note(self, account_id: str, effect: str | None, wait_s: float | None = None) -> None:
        """Apply what a failed attempt said about the account (see
        ``recovery.account_health_effect``)."""
        if effect == "rate_limited":
            self.rate_limited(account_id, wait_s)
        elif effect == "refused":
            self.refused(account_id)
        elif effect == "transport":
            self.transport_failed(account_id)

    def _set(self, account_id: str, health: _Health, state: AccountState) -> None:
        if health.state is state:
            return
        health.state = state
        if state is AccountState.HEALTHY:
            health.until = 0.0
        if self.on_change is not None:
            self.on_change(account_id, state)
