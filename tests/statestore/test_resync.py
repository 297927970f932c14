"""The queue of binds that did not reach Redis."""

from __future__ import annotations

from statestore.resync import ResyncQueue
from tests.statestore.support import binding


def test_consecutive_failures_remember_what_redis_held_before_the_first() -> None:
    queue = ResyncQueue()
    queue.add(binding("r2", turn_state="ts-2"), failed_at=1.0, redis_last_before="r1")
    queue.add(binding("r3", turn_state=None), failed_at=2.0, redis_last_before="r2")
    override = queue.session_override("g", "sess-1")
    assert override is not None
    assert (override.response_id, override.turn_state, override.redis_last_before) == (
        "r3",
        "ts-2",
        "r1",
    )
    first, second = queue.batch(10)
    assert queue.owns_session(first) is None  # superseded: only its response keys replay
    assert queue.owns_session(second) is override


def test_done_and_forget_clear_items_and_their_session_override() -> None:
    queue = ResyncQueue()
    queue.add(binding("r2"), 1.0, "r1")
    queue.add(binding("r9", session_key="other"), 1.0, None)
    queue.done(queue.batch(1))
    assert len(queue) == 1 and queue.session_override("g", "sess-1") is None
    queue.forget("g", "r9")
    assert not queue and queue.session_override("g", "other") is None


def test_bounded_oldest_given_up_first() -> None:
    queue = ResyncQueue(max_entries=2)
    for i in range(3):
        queue.add(binding(f"r{i}", session_key=f"s{i}"), float(i), None)
    assert [item.binding.response_id for item in queue.batch(10)] == ["r1", "r2"]
    assert queue.session_override("g", "s0") is None
    assert queue.session_override("g", "s2") is not None
