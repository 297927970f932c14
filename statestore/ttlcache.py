"""A bounded LRU map whose entries expire on an injected clock."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class TTLCache(Generic[K, V]):
    """Expired entries are dropped when read; at capacity the least recently used goes.
    Expired-but-unread entries age to the LRU end, so they are the first evicted."""

    __slots__ = ("_clock", "_data", "_max")

    def __init__(self, max_entries: int, clock: Callable[[], float]) -> None:
        if max_entries <= 0:
            raise ValueError("max_entries must be positive")
        self._data: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self._max = max_entries
        self._clock = clock

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: K) -> V | None:
        found = self._data.get(key)
        if found is None:
            return None
        expires, value = found
        if expires <= self._clock():
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return value

    def set(self, key: K, value: V, ttl_s: float) -> None:
        if ttl_s <= 0:
            self._data.pop(key, None)
            return
        self._data[key] = (self._clock() + ttl_s, value)
        self._data.move_to_end(key)
        if len(self._data) > self._max:
            self._data.popitem(last=False)

    def delete(self, key: K) -> None:
        self._data.pop(key, None)
