"""Per-client-socket transcript: the full input so far plus the last output.

With it an incremental request (``previous_response_id`` + delta) can always be
expanded into a full one: for HTTP fallback (no socket state there) and for recovery
when the upstream socket that held a ``store: false`` conversation is gone. Items are
kept as raw bytes; nothing is re-encoded. Bounded per socket and per process.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from gateway.context import TranscriptBudget
from normalizer import expand_to_full
from normalizer.snapshot import Item, RequestSnapshot, item_from_raw


class Transcript:
    def __init__(self, budget: TranscriptBudget, per_socket_limit: int) -> None:
        self._budget = budget
        self._limit = per_socket_limit
        self.items: tuple[Item, ...] | None = None  # None: no usable transcript
        self.response_id: str | None = None  # the response the transcript ends with
        self.nbytes = 0
        self.overflowed = False

    def covers(self, previous_response_id: str | None) -> bool:
        return (
            self.items is not None
            and previous_response_id is not None
            and previous_response_id == self.response_id
        )

    def full_items(self, request: RequestSnapshot) -> tuple[Item, ...] | None:
        """The full input this request stands for, or None when it cannot be known."""
        prev = request.previous_response_id
        if prev is None:
            return tuple(request.items)
        if self.covers(prev):
            assert self.items is not None
            return self.items + tuple(request.items)
        return None

    def expand(self, request: RequestSnapshot) -> RequestSnapshot | None:
        """The request with its full input and no previous_response_id, or None."""
        prev = request.previous_response_id
        if prev is None:
            return request
        if not self.covers(prev):
            return None
        assert self.items is not None
        return expand_to_full(request, self.items)

    def record(
        self, sent: RequestSnapshot, output: Sequence[msgspec.Raw], response_id: str
    ) -> None:
        """After a terminal event: transcript = full input of what was sent + its output."""
        full = self.full_items(sent)
        self._release()
        if full is None or self.overflowed:
            return
        items = full + tuple(item_from_raw(raw) for raw in output)
        size = sum(len(item.raw) for item in items)
        if size > self._limit or not self._budget.try_take(size):
            # Over a cap: recovery falls back to asking the client for a full replay.
            self.overflowed = size > self._limit
            return
        self.items = items
        self.response_id = response_id
        self.nbytes = size

    def seed(self, items: Sequence[msgspec.Raw], response_id: str) -> bool:
        """Start from a conversation rebuilt elsewhere (a durable transcript); False when it
        is over a cap (then the transcript stays empty)."""
        self._release()
        self.overflowed = False
        size = sum(len(raw) for raw in items)
        if size > self._limit or not self._budget.try_take(size):
            return False
        self.items = tuple(item_from_raw(raw) for raw in items)
        self.response_id = response_id
        self.nbytes = size
        return True

    def invalidate(self) -> None:
        self._release()

    def _release(self) -> None:
        if self.nbytes:
            self._budget.give_back(self.nbytes)
        self.items = None
        self.response_id = None
        self.nbytes = 0

    def close(self) -> None:
        self._release()
