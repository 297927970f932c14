"""The bounded TTL'd LRU under an injected clock."""

from __future__ import annotations

import pytest

from statestore.ttlcache import TTLCache
from tests.statestore.support import FakeClock


def test_entries_expire_on_the_clock() -> None:
    clock = FakeClock()
    cache = TTLCache[str, int](10, clock)
    cache.set("a", 1, ttl_s=5)
    clock.advance(4.999)
    assert cache.get("a") == 1
    clock.advance(0.001)
    assert cache.get("a") is None
    assert len(cache) == 0  # dropped when read expired


def test_least_recently_used_is_evicted_at_capacity() -> None:
    clock = FakeClock()
    cache = TTLCache[str, int](2, clock)
    cache.set("a", 1, 60)
    cache.set("b", 2, 60)
    assert cache.get("a") == 1  # a is now the most recently used
    cache.set("c", 3, 60)
    assert cache.get("b") is None
    assert (cache.get("a"), cache.get("c")) == (1, 3)
    assert len(cache) == 2


def test_overwrite_refreshes_expiry_and_delete_and_nonpositive_ttl_remove() -> None:
    clock = FakeClock()
    cache = TTLCache[str, str](4, clock)
    cache.set("k", "v1", 5)
    clock.advance(4)
    cache.set("k", "v2", 5)
    clock.advance(4)
    assert cache.get("k") == "v2"
    cache.delete("k")
    assert cache.get("k") is None
    cache.set("k", "v3", 5)
    cache.set("k", "v4", 0)
    assert cache.get("k") is None
    cache.delete("missing")  # no error


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError):
        TTLCache[str, str](0, FakeClock())
