"""The indexed heap: order (unbound first, then least recently used) and index agreement."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from pool.heap import Entry, IdleHeap
from tests.pool.fakes import FakeConn


def entry(conn_id: str, last_used: float, bound: bool = False) -> Entry:
    return Entry(FakeConn(conn_id), conn_id, 0.0, last_used, last_used, bound)


def drain(heap: IdleHeap) -> list[str]:
    out = []
    while (top := heap.pop()) is not None:
        out.append(top.conn_id)
        heap.check()
    return out


def test_unbound_first_then_least_recently_used() -> None:
    heap = IdleHeap()
    for e in [
        entry("bound-old", 1.0, bound=True),
        entry("free-new", 5.0),
        entry("free-old", 2.0),
        entry("bound-oldest", 0.5, bound=True),
        entry("free-mid", 3.0),
    ]:
        heap.push(e)
        heap.check()
    top = heap.peek()
    assert top is not None and top.conn_id == "free-old"
    assert drain(heap) == ["free-old", "free-mid", "free-new", "bound-oldest", "bound-old"]
    assert len(heap) == 0 and heap.pop() is None and heap.peek() is None


def test_remove_from_the_middle_by_id() -> None:
    heap = IdleHeap()
    for i in range(20):
        heap.push(entry(f"c{i}", float(i), bound=i % 3 == 0))
    middle = heap.position("c10")
    assert middle is not None and 0 < middle < 19
    removed = heap.remove("c10")
    assert removed is not None and removed.conn_id == "c10" and removed.heap_pos == -1
    assert "c10" not in heap and heap.get("c10") is None and heap.position("c10") is None
    heap.check()
    assert heap.remove("c10") is None and heap.remove("never-there") is None
    unbound = [f"c{i}" for i in range(20) if i % 3 and i != 10]
    bound = [f"c{i}" for i in range(20) if i % 3 == 0]
    assert drain(heap) == unbound + bound


def test_remove_last_and_only_entries() -> None:
    heap = IdleHeap()
    heap.push(entry("only", 1.0))
    assert heap.remove("only") is not None and len(heap) == 0
    heap.check()
    heap.push(entry("a", 1.0))
    heap.push(entry("b", 2.0))
    assert heap.remove("b") is not None  # the last slot: nothing to move
    heap.check()
    assert [e.conn_id for e in heap] == ["a"]


def test_equal_ranks_are_all_returned() -> None:
    heap = IdleHeap()
    for i in range(7):
        heap.push(entry(f"c{i}", 1.0))
    assert sorted(drain(heap)) == [f"c{i}" for i in range(7)]


ops = st.lists(
    st.one_of(
        st.tuples(st.just("push"), st.integers(0, 30), st.booleans(), st.integers(0, 50)),
        st.tuples(st.just("pop"), st.just(0), st.just(False), st.just(0)),
        st.tuples(st.just("remove"), st.integers(0, 30), st.just(False), st.just(0)),
    ),
    max_size=120,
)


@settings(max_examples=150, deadline=None)
@given(ops)
def test_heap_matches_a_sorted_model(script: list[tuple[str, int, bool, int]]) -> None:
    heap = IdleHeap()
    model: dict[str, tuple[bool, float]] = {}
    for op, n, bound, used in script:
        conn_id = f"c{n}"
        if op == "push" and conn_id not in model:
            heap.push(entry(conn_id, float(used), bound))
            model[conn_id] = (bound, float(used))
        elif op == "pop":
            top = heap.pop()
            if not model:
                assert top is None
            else:
                assert top is not None
                assert (top.bound, top.last_used) == min(model.values())
                del model[top.conn_id]
        elif op == "remove":
            removed = heap.remove(conn_id)
            assert (removed is not None) == (conn_id in model)
            model.pop(conn_id, None)
        heap.check()
        assert len(heap) == len(model)
        assert all(conn_id in heap for conn_id in model)
