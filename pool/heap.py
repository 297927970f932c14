"""An indexed binary min-heap of idle connections.

A list holds the entries in heap order and a dict maps conn_id -> entry; each entry
carries its own list position (``heap_pos``), kept current by every sift step. So the
index answers conn_id -> heap position in O(1), push/pop/remove-by-id are O(log n), and
a continuation takes its preferred socket out of the middle of the heap without a scan.
(Keeping the position on the entry instead of in a second dict keyed by id saves a
hash-table write per sift level: measured ~30% off pop+push at 10,000 entries.)

Order: sockets holding no live conversation first (with ``store: false`` a bound
socket holds its conversation's only copy of the previous response, so it goes to a
new conversation last), then least recently used. The order is folded into one float,
``rank``, because comparing floats is what keeps a sift level cheap.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from pool.types import Conn

# Bound sockets rank after every unbound one. Clock readings are monotonic seconds
# (since boot, or epoch seconds for an injected wall clock), far below 2**36 (~2,000
# years); at that magnitude a float still resolves 16 microseconds.
BOUND_PENALTY_S = float(2**36)


def rank_of(bound: bool, last_used: float) -> float:
    return last_used + BOUND_PENALTY_S if bound else last_used


@dataclass(slots=True, eq=False)
class Entry:
    """The pool's bookkeeping for one socket (idle or leased)."""

    conn: Conn
    conn_id: str
    created_at: float
    last_used: float
    # Last time the socket was known alive: dialed, released or answered a ping.
    last_checked: float
    bound: bool = False
    # Heap key and position; meaningful only while the entry sits in the heap.
    rank: float = 0.0
    heap_pos: int = -1


class IdleHeap:
    __slots__ = ("_by_id", "_items")

    def __init__(self) -> None:
        self._items: list[Entry] = []
        self._by_id: dict[str, Entry] = {}

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, conn_id: object) -> bool:
        return conn_id in self._by_id

    def __iter__(self) -> Iterator[Entry]:
        """A snapshot, so callers may remove entries while iterating."""
        return iter(list(self._items))

    def get(self, conn_id: str) -> Entry | None:
        return self._by_id.get(conn_id)

    def position(self, conn_id: str) -> int | None:
        entry = self._by_id.get(conn_id)
        return None if entry is None else entry.heap_pos

    def peek(self) -> Entry | None:
        return self._items[0] if self._items else None

    def push(self, entry: Entry) -> None:
        entry.rank = rank_of(entry.bound, entry.last_used)
        items = self._items
        entry.heap_pos = len(items)
        items.append(entry)
        self._by_id[entry.conn_id] = entry
        self._sift_up(entry.heap_pos)

    def pop(self) -> Entry | None:
        """Remove and return the cheapest entry, or None when empty."""
        items = self._items
        if not items:
            return None
        last = items.pop()
        if items:
            top = items[0]
            items[0] = last
            last.heap_pos = 0
            self._sift_down(0)
        else:
            top = last
        del self._by_id[top.conn_id]
        top.heap_pos = -1
        return top

    def remove(self, conn_id: str) -> Entry | None:
        """Take an entry out of the middle of the heap by id; None when absent."""
        entry = self._by_id.pop(conn_id, None)
        if entry is None:
            return None
        i = entry.heap_pos
        items = self._items
        last = items.pop()
        if i < len(items):
            items[i] = last
            last.heap_pos = i
            if i > 0 and last.rank < items[(i - 1) >> 1].rank:
                self._sift_up(i)
            else:
                self._sift_down(i)
        entry.heap_pos = -1
        return entry

    def _sift_up(self, i: int, start: int = 0) -> None:
        """Move the entry at ``i`` up while it ranks before its parent, not above ``start``."""
        items = self._items
        entry = items[i]
        rank = entry.rank
        while i > start:
            parent_i = (i - 1) >> 1
            parent = items[parent_i]
            if not rank < parent.rank:
                break
            items[i] = parent
            parent.heap_pos = i
            i = parent_i
        items[i] = entry
        entry.heap_pos = i

    def _sift_down(self, i: int) -> None:
        # Floyd's variant (as in heapq): walk the smaller child up to a leaf, then sift
        # the moved entry back up. The moved entry is usually the most recently used, so
        # this takes one comparison per level instead of two.
        items = self._items
        last_i = len(items) - 1
        start = i
        entry = items[i]
        child_i = 2 * i + 1
        while child_i < last_i:  # both children exist
            child = items[child_i]
            right = items[child_i + 1]
            if right.rank <= child.rank:
                child = right
                child_i += 1
            items[i] = child
            child.heap_pos = i
            i = child_i
            child_i = 2 * i + 1
        if child_i == last_i:  # a lone left child at the bottom
            child = items[child_i]
            items[i] = child
            child.heap_pos = i
            i = child_i
        items[i] = entry
        entry.heap_pos = i
        self._sift_up(i, start)

    def check(self) -> None:
        """Heap order holds and the index agrees with the list (tests call this)."""
        items = self._items
        if len(self._by_id) != len(items):
            raise AssertionError(f"index has {len(self._by_id)} ids, heap {len(items)} entries")
        for i, entry in enumerate(items):
            if self._by_id.get(entry.conn_id) is not entry:
                raise AssertionError(f"{entry.conn_id} at {i} is not in the index")
            if entry.heap_pos != i:
                raise AssertionError(f"{entry.conn_id} at {i} records position {entry.heap_pos}")
            if entry.rank != rank_of(entry.bound, entry.last_used):
                raise AssertionError(f"{entry.conn_id} changed its order key while in the heap")
            if i > 0 and entry.rank < items[(i - 1) >> 1].rank:
                raise AssertionError(f"heap order broken at position {i}")
