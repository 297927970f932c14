"""The in-process mappings shared by the memory backend and the Redis hot cache."""

from __future__ import annotations

from statestore.local import LocalState, ResponseRecord
from tests.statestore.support import PENDING, FakeClock, binding


def test_bind_fills_every_mapping_and_copies_pending_calls() -> None:
    local = LocalState(100, 60, FakeClock())
    pending = dict(PENDING)
    local.bind(binding("r1", pending_calls=pending))
    pending["call_9"] = "function_call"  # the caller's dict is not the stored one
    assert local.response("g", "r1") == ResponseRecord("acct-a", PENDING)
    assert local.session("g", "sess-1") == ("r1", "ts-1")
    assert local.conn.get("r1") == "gw:acct-a:1"
    assert local.response("other", "r1") is None  # group is part of the key


def test_bind_without_turn_state_keeps_the_previous_one() -> None:
    local = LocalState(100, 60, FakeClock())
    local.bind(binding("r1", turn_state="ts-1"))
    local.bind(binding("r2", turn_state=None, conn_id=None))
    assert local.session("g", "sess-1") == ("r2", "ts-1")
    assert local.conn.get("r2") is None


def test_forget_drops_the_response_and_its_conn_but_not_the_session() -> None:
    local = LocalState(100, 60, FakeClock())
    local.bind(binding("r1"))
    local.forget("g", "r1")
    assert local.response("g", "r1") is None and local.conn.get("r1") is None
    assert local.session("g", "sess-1") == ("r1", "ts-1")
