"""Per-client-socket transcript: the full input so far plus the last output.

With it an incremental request (``previous_response_id`` + delta) can always be
expanded into a full one: for HTTP fallback (no socket state there) and for recovery
when the upstream socket that held a ``store: false`` conversation is gone. Items are
kept as raw bytes; nothing is re-encoded. Bounded per socket and per process.

A turn that continues the transcript appends to it: its cost is the turn's own items,
not the conversation's length (a long tool loop records every turn in O(its items)).
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
        self._items: list[Item] = []
        self._usable = False  # False: no usable transcript
        self.response_id: str | None = None  # the response the transcript ends with
        self.nbytes = 0
        self.overflowed = False

    @property
    def items(self) -> Sequence[Item] | None:
        """The conversation up to ``response_id``, or None. A live view: later turns
        append to it, so a holder that outlives the turn copies it."""
        return self._items if self._usable else None

    def covers(self, previous_response_id: str | None) -> bool:
        return (
            self._usable
            and previous_response_id is not None
            and previous_response_id == self.response_id
        )

    def expand(self, request: RequestSnapshot) -> RequestSnapshot | None:
        """The request with its full input and no previous_response_id, or None."""
        prev = request.previous_response_id
        if prev is None:
            return request
        if not self.covers(prev):
            return None
        return expand_to_full(request, self._items)

    def record(
        self, sent: RequestSnapshot, output: Sequence[msgspec.Raw], response_id: str
    ) -> None:
        """After a terminal event: transcript = full input of what was sent + its output."""
        prev = sent.previous_response_id
        appends = prev is not None and self.covers(prev)
        if (prev is not None and not appends) or self.overflowed:
            self._release()
            return
        added = [*sent.items, *(item_from_raw(raw) for raw in output)]
        added_bytes = sum(len(item.raw) for item in added)
        if not appends:
            self._release()  # a whole conversation: it replaces what was kept
        size = self.nbytes + added_bytes
        if size > self._limit or not self._budget.try_take(added_bytes):
            # Over a cap: recovery falls back to asking the client for a full replay.
            self.overflowed = size > self._limit
            self._release()
            return
        self._items.extend(added)
        self._usable = True
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
        self._items = [item_from_raw(raw) for raw in items]
        self._usable = True
        self.response_id = response_id
        self.nbytes = size
        return True

    def invalidate(self) -> None:
        self._release()

    def _release(self) -> None:
        if self.nbytes:
            self._budget.give_back(self.nbytes)
        # A new list: a view handed out earlier keeps what it saw.
        self._items = []
        self._usable = False
        self.response_id = None
        self.nbytes = 0

    def close(self) -> None:
        self._release()
