"""An indexed binary min-heap: push/pop/remove-by-id in O(log n), lookup in O(1).

Entries are ordered by ``(bound, last_used)``: sockets holding no live conversation
first, then the least recently used. With ``store: false`` a bound socket holds its
conversation's only copy of the previous response, so it is handed to a new
conversation last.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pool.types import Conn


@dataclass(slots=True, eq=False)
class Entry:
    conn: Conn
    conn_id: str
    created_at: float
    last_used: float
    last_checked: float
    bound: bool = False
    released: bool = field(default=True)

    def key(self) -> tuple[bool, float]:
        return (self.bound, self.last_used)


class IndexedHeap:
    def __init__(self) -> None:
        self._items: list[Entry] = []
        self._pos: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, conn_id: object) -> bool:
        return conn_id in self._pos

    def get(self, conn_id: str) -> Entry | None:
        index = self._pos.get(conn_id)
        return None if index is None else self._items[index]

    def entries(self) -> list[Entry]:
        return list(self._items)

    def push(self, entry: Entry) -> None:
        self._items.append(entry)
        self._pos[entry.conn_id] = len(self._items) - 1
        self._sift_up(len(self._items) - 1)

    def peek(self) -> Entry | None:
        return self._items[0] if self._items else None

    def pop(self) -> Entry | None:
        if not self._items:
            return None
        return self._remove_at(0)

    def remove(self, conn_id: str) -> Entry | None:
        index = self._pos.get(conn_id)
        if index is None:
            return None
        return self._remove_at(index)

    def _remove_at(self, index: int) -> Entry:
        items = self._items
        entry = items[index]
        last = items.pop()
        del self._pos[entry.conn_id]
        if index < len(items):
            items[index] = last
            self._pos[last.conn_id] = index
            self._sift_down(index)
            self._sift_up(index)
        return entry

    def _swap(self, i: int, j: int) -> None:
        items = self._items
        items[i], items[j] = items[j], items[i]
        self._pos[items[i].conn_id] = i
        self._pos[items[j].conn_id] = j

    def _sift_up(self, index: int) -> None:
        items = self._items
        while index > 0:
            parent = (index - 1) >> 1
            if items[index].key() < items[parent].key():
                self._swap(index, parent)
                index = parent
            else:
                return

    def _sift_down(self, index: int) -> None:
        items = self._items
        size = len(items)
        while True:
            left = 2 * index + 1
            smallest = index
            if left < size and items[left].key() < items[smallest].key():
                smallest = left
            right = left + 1
            if right < size and items[right].key() < items[smallest].key():
                smallest = right
            if smallest == index:
                return
            self._swap(index, smallest)
            index = smallest

    def check(self) -> None:
        """Heap order and index agree (used by tests)."""
        items = self._items
        assert len(self._pos) == len(items)
        for i, entry in enumerate(items):
            assert self._pos[entry.conn_id] == i
            if i:
                assert items[(i - 1) >> 1].key() <= entry.key()
