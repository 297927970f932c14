"""The single pre-send normalizer (seed 000, R-07): invariant first.

Steps, in order, on the request snapshot and the known continuation state:

1. infer / align ``previous_response_id``: infer it when the client sent tool outputs
   that only the session's last response can satisfy; with ``store`` not true, align a
   stale id to the last one (only the socket's latest response exists upstream).
2. inject ``"aborted"`` outputs: for the previous response's pending calls that the
   input does not answer (at the front: they answer the previous response), and for
   calls inside the input without an output (right after the call, as Codex does).
   An output placed before its own call is moved right after it.
3. remove orphan outputs (no call in the input nor in the known pending set) and
   duplicate outputs (a call gets exactly one).
4. keep ``previous_response_id`` invariant-first. It is never dropped here: when the
   upstream lost the previous response the decision is ``needs_full_replay`` and the
   gateway expands the request with its transcript (dropping it on a delta input
   would silently lose the conversation).

"Output present but pending unknown" (a chained request whose previous response's
calls we do not know) is its own state: the outputs and the id are kept and the
upstream, which knows the calls, is trusted; an error there goes to recovery.
"""

from __future__ import annotations

from collections.abc import Sequence

from normalizer.snapshot import Item, RequestSnapshot, encode_request, make_item
from normalizer.types import (
    ContinuationState,
    Decision,
    InvariantState,
    InvariantViolation,
    NormalizeResult,
    Reason,
)

# Call item type -> the output item type that answers it (PROTOCOL §7).
OUTPUT_FOR_CALL = {
    "function_call": "function_call_output",
    "local_shell_call": "function_call_output",
    "custom_tool_call": "custom_tool_call_output",
    "tool_search_call": "tool_search_output",
}
OUTPUT_TYPES = frozenset(OUTPUT_FOR_CALL.values())

_REASON_PRIORITY = (
    Reason.PREVIOUS_UNAVAILABLE,
    Reason.INJECTED_ABORTED,
    Reason.REMOVED_ORPHANS,
    Reason.REMOVED_DUPLICATES,
    Reason.MOVED_OUTPUTS,
    Reason.ALIGNED_PREVIOUS,
    Reason.INFERRED_PREVIOUS,
    Reason.PENDING_UNKNOWN,
    Reason.KEPT_FOR_OUTPUTS,
)


def aborted_output(call_kind: str, call_id: str) -> Item:
    output_type = OUTPUT_FOR_CALL.get(call_kind, "function_call_output")
    if output_type == "tool_search_output":
        return make_item(
            {
                "type": output_type,
                "call_id": call_id,
                "status": "completed",
                "execution": "client",
                "tools": [],
            }
        )
    return make_item({"type": output_type, "call_id": call_id, "output": "aborted"})


def _is_call(item: Item) -> bool:
    return item.type in OUTPUT_FOR_CALL and item.call_id is not None


def _is_output(item: Item) -> bool:
    return item.type in OUTPUT_TYPES and item.call_id is not None


def normalize(
    request: RequestSnapshot, state: ContinuationState, *, strict: bool = False
) -> NormalizeResult:
    reasons: set[Reason] = set()
    actions: list[str] = []
    items = list(request.items)
    calls_in_input = {item.call_id for item in items if _is_call(item)}
    outputs_in_input = [item for item in items if _is_output(item)]
    known = (
        {p.call_id: p.kind for p in state.pending_calls}
        if state.pending_calls is not None
        else None
    )

    # 1. infer / align previous_response_id
    prev = request.previous_response_id
    prev_action = "kept" if prev is not None else "none"
    last = state.last_response_id
    if prev is None and last is not None and known:
        if any(o.call_id not in calls_in_input and o.call_id in known for o in outputs_in_input):
            prev, prev_action = last, "inferred"
            reasons.add(Reason.INFERRED_PREVIOUS)
            actions.append("inferred_previous_response_id")
    elif prev is not None and last is not None and prev != last and request.store is not True:
        prev, prev_action = last, "aligned"
        reasons.add(Reason.ALIGNED_PREVIOUS)
        actions.append("aligned_previous_response_id")

    # The pending set that applies: the previous response's (known only for `last`).
    if prev is None:
        pending: dict[str, str] | None = {}
    elif prev == last and known is not None:
        pending = known
    else:
        pending = None

    # 2. inject aborted outputs
    answered = {o.call_id for o in outputs_in_input}
    front: list[Item] = []
    if pending:
        for call_id, kind in pending.items():
            if call_id not in answered and call_id not in calls_in_input:
                front.append(aborted_output(kind, call_id))
                answered.add(call_id)
    # An output placed before its own call is moved to right after the call: the
    # upstream reads the input in order and would find no call for it.
    paired: list[Item] = []
    inline = moved = 0
    seen_calls: set[str] = set()
    early: dict[str, list[Item]] = {}
    for item in items:
        if _is_output(item) and item.call_id in calls_in_input and item.call_id not in seen_calls:
            assert item.call_id is not None
            early.setdefault(item.call_id, []).append(item)
            continue
        paired.append(item)
        if _is_call(item):
            assert item.call_id is not None
            seen_calls.add(item.call_id)
            if item.call_id in early:
                moved += len(early[item.call_id])
                paired.extend(early.pop(item.call_id))
            elif item.call_id not in answered:
                paired.append(aborted_output(item.type, item.call_id))
                answered.add(item.call_id)
                inline += 1
    injected = len(front) + inline
    if moved:
        reasons.add(Reason.MOVED_OUTPUTS)
        actions.append(f"moved_outputs:{moved}")
    if injected:
        reasons.add(Reason.INJECTED_ABORTED)
        actions.append(f"injected_aborted:{injected}")

    # 3. remove orphan and duplicate outputs
    targets = calls_in_input | set(pending or ())
    kept: list[Item] = []
    seen: set[str] = set()
    orphans = duplicates = unknown = 0
    for item in front + paired:
        if _is_output(item):
            assert item.call_id is not None
            if item.call_id in seen:
                duplicates += 1
                continue
            if item.call_id not in targets:
                if pending is not None:
                    orphans += 1
                    continue
                unknown += 1  # pending unknown: the upstream knows the calls
            seen.add(item.call_id)
        kept.append(item)
    if orphans:
        reasons.add(Reason.REMOVED_ORPHANS)
        actions.append(f"removed_orphans:{orphans}")
    if duplicates:
        reasons.add(Reason.REMOVED_DUPLICATES)
        actions.append(f"removed_duplicates:{duplicates}")
    if unknown:
        reasons.add(Reason.PENDING_UNKNOWN)

    # 4. keep previous_response_id, invariant first
    needs_previous = any(_is_output(i) and i.call_id not in calls_in_input for i in kept)
    if (
        prev is not None
        and needs_previous
        and not reasons & {Reason.INFERRED_PREVIOUS, Reason.ALIGNED_PREVIOUS}
    ):
        reasons.add(Reason.KEPT_FOR_OUTPUTS)
    if prev is not None and not state.previous_available:
        reasons.add(Reason.PREVIOUS_UNAVAILABLE)

    removed = orphans + duplicates
    if Reason.PREVIOUS_UNAVAILABLE in reasons:
        invariant = InvariantState.NEEDS_FULL_REPLAY
    elif injected or removed or moved:
        invariant = InvariantState.REPAIRED
    elif unknown:
        invariant = InvariantState.PENDING_UNKNOWN
    else:
        invariant = InvariantState.CONSISTENT
    reason = next((r for r in _REASON_PRIORITY if r in reasons), Reason.OK)
    decision = Decision(invariant, reason, tuple(actions), injected, removed, prev_action)
    if strict and (injected or removed or moved):
        raise InvariantViolation(decision, "; ".join(actions))

    result = request
    if prev != request.previous_response_id:
        result = result.with_previous_response_id(prev)
    if injected or removed or moved:
        result = result.with_items(kept)
    return NormalizeResult(result, encode_request(result), decision)


def expand_to_full(request: RequestSnapshot, transcript: Sequence[Item]) -> RequestSnapshot:
    """R-28: the request with the transcript before its items and no previous_response_id."""
    return request.with_items(tuple(transcript) + request.items).with_previous_response_id(None)


def to_http_body(request: RequestSnapshot) -> bytes:
    """The request as a POST /v1/responses body: no type, generate or previous_response_id; streamed."""
    body = request.without_fields("type", "generate", "previous_response_id", "stream").with_field(
        "stream", b"true"
    )
    return encode_request(body)
