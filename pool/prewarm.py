"""When a pool may start a prewarm round: a cooldown between rounds, and a failure gate.

Prewarm dials sockets nobody asked for yet, so it must not hammer an upstream that is
down: ``threshold`` dial failures within ``window_s`` shut the gate for ``reopen_s``
(any successful dial forgets the failures). Every reading comes from the injected clock.
"""

from __future__ import annotations

import collections

from pool.types import Clock, PoolConfig


class PrewarmGate:
    __slots__ = (
        "_clock",
        "_closed_until",
        "_cooldown_s",
        "_failures",
        "_not_before",
        "_reopen_s",
        "_threshold",
        "_window_s",
        "trips",
    )

    def __init__(self, config: PoolConfig, clock: Clock) -> None:
        self._clock = clock
        self._cooldown_s = config.prewarm_cooldown_s
        self._window_s = config.prewarm_failure_window_s
        self._threshold = config.prewarm_failure_threshold
        self._reopen_s = config.prewarm_reopen_s
        self._not_before = float("-inf")  # end of the cooldown after the last round
        self._closed_until = float("-inf")  # end of the shut period after a trip
        self._failures: collections.deque[float] = collections.deque()  # within the window
        self.trips = 0  # times the failure gate shut

    def is_open(self) -> bool:
        """False while the failure gate is shut (a running round stops dialing)."""
        return self._clock() >= self._closed_until

    def may_start(self) -> bool:
        """A new round may start: the gate is open and the cooldown has passed."""
        now = self._clock()
        return now >= self._not_before and now >= self._closed_until

    def round_started(self) -> None:
        self._not_before = self._clock() + self._cooldown_s

    def round_finished(self) -> None:
        """The cooldown counts from the end of a round too (a long round is no burst)."""
        self._not_before = max(self._not_before, self._clock() + self._cooldown_s)

    def dial_failed(self) -> None:
        now = self._clock()
        window = self._failures
        window.append(now)
        while window and now - window[0] > self._window_s:
            window.popleft()
        if len(window) >= self._threshold:
            self._closed_until = now + self._reopen_s
            self.trips += 1
            window.clear()

    def dial_succeeded(self) -> None:
        self._failures.clear()
