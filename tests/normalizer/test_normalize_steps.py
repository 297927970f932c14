"""Each step of the normalizer on its own, on small hand-written inputs."""

from __future__ import annotations

import json
from typing import Any

import pytest

from normalizer import InvariantState, Item, Reason, RequestSnapshot, decode_request, make_item
from normalizer.normalize import (
    Record,
    abort_unanswered_pending,
    choose_previous,
    classify,
    drop_orphans_and_duplicates,
    pair_outputs_with_calls,
    pending_for,
    settle,
)


def fc(call_id: str) -> Item:
    return make_item({"type": "function_call", "call_id": call_id, "name": "f", "arguments": "{}"})


def out(call_id: str, text: str = "ok") -> Item:
    return make_item({"type": "function_call_output", "call_id": call_id, "output": text})


def msg(text: str) -> Item:
    return make_item({"type": "message", "role": "user", "content": text})


def shape(items: list[Item]) -> list[tuple[str, str | None]]:
    return [(i.type, i.call_id) for i in items]


def request(items: list[dict[str, Any]], **fields: Any) -> RequestSnapshot:
    return decode_request(json.dumps({"type": "response.create", "input": items, **fields}))


# -- choose_previous ------------------------------------------------------------------------


def test_choose_previous_infers_the_last_response_for_outputs_only_it_can_satisfy() -> None:
    req = request([{"type": "function_call_output", "call_id": "c1", "output": "x"}])
    record = Record()
    assert choose_previous(req, "r9", {"c1": "function_call"}, set(), record) == (
        "r9",
        "inferred",
    )
    assert record.reasons == {Reason.INFERRED_PREVIOUS}
    assert record.actions == ["inferred_previous_response_id"]


@pytest.mark.parametrize(
    ("last", "known", "calls_in_input"),
    [
        (None, {"c1": "function_call"}, set()),  # no last response to point at
        ("r9", {}, set()),  # the last response left no calls
        ("r9", None, set()),  # its calls are unknown
        ("r9", {"c2": "function_call"}, set()),  # the output answers another call
        ("r9", {"c1": "function_call"}, {"c1"}),  # the call is in the input itself
    ],
)
def test_choose_previous_infers_nothing_without_a_known_pending_call_to_answer(
    last: str | None, known: dict[str, str] | None, calls_in_input: set[str]
) -> None:
    req = request([{"type": "function_call_output", "call_id": "c1", "output": "x"}])
    record = Record()
    assert choose_previous(req, last, known, calls_in_input, record) == (None, "none")
    assert not record.reasons and not record.actions


def test_choose_previous_aligns_a_stale_id_unless_store_is_true() -> None:
    record = Record()
    assert choose_previous(request([], previous_response_id="r1"), "r2", None, set(), record) == (
        "r2",
        "aligned",
    )
    assert record.actions == ["aligned_previous_response_id"]
    stored = request([], previous_response_id="r1", store=True)
    assert choose_previous(stored, "r2", None, set(), Record()) == ("r1", "kept")


def test_choose_previous_keeps_a_current_or_unknown_id() -> None:
    req = request([], previous_response_id="r1")
    assert choose_previous(req, "r1", None, set(), Record()) == ("r1", "kept")
    assert choose_previous(req, None, None, set(), Record()) == ("r1", "kept")


# -- pending_for ----------------------------------------------------------------------------


def test_pending_for() -> None:
    known = {"c1": "function_call"}
    assert pending_for(None, "r1", known) == {}  # a fresh conversation owes nothing
    assert pending_for("r1", "r1", known) == known
    assert pending_for("r1", "r1", None) is None  # the last response's calls are unknown
    assert pending_for("r0", "r1", known) is None  # an older response: unknown


# -- abort_unanswered_pending -----------------------------------------------------------------


def test_abort_unanswered_pending_skips_answered_calls_and_calls_in_the_input() -> None:
    pending = {"c1": "function_call", "c2": "custom_tool_call", "c3": "function_call"}
    front = abort_unanswered_pending(pending, answered={"c1"}, calls_in_input={"c3"})
    assert shape(front) == [("custom_tool_call_output", "c2")]
    assert abort_unanswered_pending(None, set(), set()) == []
    assert abort_unanswered_pending({}, set(), set()) == []


# -- pair_outputs_with_calls ------------------------------------------------------------------


def test_pair_moves_an_early_output_right_after_its_call() -> None:
    items = [out("c1"), msg("a"), fc("c1"), msg("b")]
    paired, moved, injected = pair_outputs_with_calls(items, {"c1"}, {"c1"})
    assert shape(paired) == [
        ("message", None),
        ("function_call", "c1"),
        ("function_call_output", "c1"),
        ("message", None),
    ]
    assert (moved, injected) == (1, 0)


def test_pair_adds_an_aborted_output_after_an_unanswered_call_once() -> None:
    items = [fc("c1"), msg("a"), fc("c1")]
    paired, moved, injected = pair_outputs_with_calls(items, {"c1"}, set())
    assert shape(paired) == [
        ("function_call", "c1"),
        ("function_call_output", "c1"),
        ("message", None),
        ("function_call", "c1"),
    ]
    assert (moved, injected) == (0, 1)
    assert b'"aborted"' in bytes(paired[1].raw)


def test_pair_leaves_answered_calls_and_outputs_for_other_calls_alone() -> None:
    items = [fc("c1"), out("c1"), out("elsewhere")]
    paired, moved, injected = pair_outputs_with_calls(items, {"c1"}, {"c1", "elsewhere"})
    assert paired == items and (moved, injected) == (0, 0)


# -- drop_orphans_and_duplicates --------------------------------------------------------------


def test_drop_orphans_and_duplicates_with_known_pending() -> None:
    items = [out("c1"), out("c1", "again"), out("ghost"), msg("hi")]
    kept, orphans, duplicates, unknown = drop_orphans_and_duplicates(items, {"c1"}, True)
    assert kept == [items[0], items[3]]
    assert (orphans, duplicates, unknown) == (1, 1, 0)


def test_drop_keeps_outputs_for_unknown_calls_when_pending_is_unknown() -> None:
    items = [out("c9"), out("c9", "again")]
    kept, orphans, duplicates, unknown = drop_orphans_and_duplicates(items, set(), False)
    assert kept == [items[0]]
    assert (orphans, duplicates, unknown) == (0, 1, 1)


# -- classify and Record ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("repaired", "unknown", "unavailable", "state"),
    [
        (False, False, False, InvariantState.CONSISTENT),
        (False, True, False, InvariantState.PENDING_UNKNOWN),
        (True, True, False, InvariantState.REPAIRED),
        (True, True, True, InvariantState.NEEDS_FULL_REPLAY),
        (False, False, True, InvariantState.NEEDS_FULL_REPLAY),
    ],
)
def test_classify(repaired: bool, unknown: bool, unavailable: bool, state: InvariantState) -> None:
    assert classify(repaired=repaired, unknown=unknown, previous_unavailable=unavailable) is state


def test_record_picks_the_most_important_reason_and_counts_only_what_happened() -> None:
    record = Record()
    assert record.reason() is Reason.OK
    record.count(Reason.REMOVED_ORPHANS, "removed_orphans", 0)
    assert not record.reasons and not record.actions
    record.note(Reason.ALIGNED_PREVIOUS, "aligned_previous_response_id")
    record.count(Reason.INJECTED_ABORTED, "injected_aborted", 2)
    record.note(Reason.PENDING_UNKNOWN)
    assert record.reason() is Reason.INJECTED_ABORTED
    assert record.actions == ["aligned_previous_response_id", "injected_aborted:2"]


# -- settle ---------------------------------------------------------------------------------


def test_settle_returns_an_unchanged_request_and_its_own_bytes() -> None:
    req = request([{"type": "message", "role": "user", "content": "hi"}])
    result, payload = settle(req, None, None)
    assert result is req and payload is req.raw


def test_settle_encodes_a_change_once_and_the_result_carries_the_bytes() -> None:
    req = request([], previous_response_id="r1")
    result, payload = settle(req, "r2", [msg("hi")])
    assert result.raw is payload and not result.changed
    assert result.previous_response_id == "r2"
    assert shape(list(result.items)) == [("message", None)]
    assert decode_request(payload).previous_response_id == "r2"
    assert shape(list(decode_request(payload).items)) == [("message", None)]


def test_settle_keeps_a_present_null_previous_id_untouched() -> None:
    req = request([], previous_response_id=None)  # the field is there, as null
    result, payload = settle(req, None, None)
    assert result is req and payload is req.raw
    assert '"previous_response_id": null' in payload  # the client's own text
