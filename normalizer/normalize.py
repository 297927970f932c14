"""The single pre-send normalizer: invariant first.

``normalize`` runs these steps, in order, on the request snapshot and the known
continuation state (each step is a small function below):

1. ``choose_previous``: infer ``previous_response_id`` when the client sent tool outputs
   that only the session's last response can satisfy; with ``store`` not true, align a
   stale id to the last one (only the socket's latest response exists upstream).
2. ``pending_for``: the previous response's pending calls, when they are known.
3. ``abort_unanswered_pending`` and ``pair_outputs_with_calls``: inject ``"aborted"``
   outputs for the previous response's pending calls that the input does not answer
   (at the front: they answer the previous response), and for calls inside the input
   without an output (right after the call, as Codex does). An output placed before its
   own call is moved right after it.
4. ``drop_orphans_and_duplicates``: remove orphan outputs (no call in the input nor in
   the known pending set) and duplicate outputs (a call gets exactly one).
5. ``classify``: keep ``previous_response_id`` invariant-first. It is dropped only
   together with expanding the input to the whole conversation: when the upstream lost
   the previous response and the caller passed the transcript, step 1 is followed by
   ``expand_with_transcript`` and the rest runs on the full input; without a
   transcript the decision is ``needs_full_replay`` (dropping the id on a delta input
   would silently lose the conversation).
6. ``settle``: encode once. The result's request carries those bytes as its ``raw``, so
   ``encode_request`` on it returns them without encoding again; an unchanged request
   keeps the very bytes object that came in.

"Output present but pending unknown" (a chained request whose previous response's
calls we do not know) is its own state: the outputs and the id are kept and the
upstream, which knows the calls, is trusted; an error there goes to recovery.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import msgspec

from normalizer.snapshot import (
    Item,
    RequestSnapshot,
    encode_request,
    encode_request_bytes,
    make_item,
)
from normalizer.types import (
    ContinuationState,
    Decision,
    InvariantState,
    InvariantViolation,
    NormalizeResult,
    Reason,
)

# Call item type -> the output item type that answers it.
OUTPUT_FOR_CALL = {
    "function_call": "function_call_output",
    "local_shell_call": "function_call_output",
    "custom_tool_call": "custom_tool_call_output",
    "tool_search_call": "tool_search_output",
}
OUTPUT_TYPES = frozenset(OUTPUT_FOR_CALL.values())

_REASON_PRIORITY = (
    Reason.PREVIOUS_UNAVAILABLE,
    Reason.DROPPED_FOR_FULL_REPLAY,
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


def _ids_of(items: Sequence[Item], types: Collection[str]) -> set[str]:
    """The call ids of the items of these types."""
    return {item.call_id for item in items if item.call_id is not None and item.type in types}


class Record:
    """What the steps did: the reasons (one becomes the decision's reason) and the
    actions, in the order they happened."""

    __slots__ = ("actions", "reasons")

    def __init__(self) -> None:
        self.reasons: set[Reason] = set()
        self.actions: list[str] = []

    def note(self, reason: Reason, action: str | None = None) -> None:
        self.reasons.add(reason)
        if action is not None:
            self.actions.append(action)

    def count(self, reason: Reason, action: str, n: int) -> None:
        """Note ``reason`` with ``action:n`` when ``n`` things were done."""
        if n:
            self.note(reason, f"{action}:{n}")

    def reason(self) -> Reason:
        return next((r for r in _REASON_PRIORITY if r in self.reasons), Reason.OK)


def choose_previous(
    request: RequestSnapshot,
    last: str | None,
    known: dict[str, str] | None,
    calls_in_input: set[str],
    record: Record,
) -> tuple[str | None, str]:
    """The ``previous_response_id`` to send and what was done to it (kept, inferred,
    aligned or none)."""
    prev = request.previous_response_id
    if prev is None:
        answers_known = known and any(
            _is_output(item) and item.call_id not in calls_in_input and item.call_id in known
            for item in request.items
        )
        if last is not None and answers_known:
            record.note(Reason.INFERRED_PREVIOUS, "inferred_previous_response_id")
            return last, "inferred"
        return None, "none"
    if last is not None and prev != last and request.store is not True:
        record.note(Reason.ALIGNED_PREVIOUS, "aligned_previous_response_id")
        return last, "aligned"
    return prev, "kept"


def expand_with_transcript(
    request: RequestSnapshot, prev: str | None, state: ContinuationState, record: Record
) -> RequestSnapshot | None:
    """The request with the whole conversation as its input and no previous response,
    when the previous response is gone upstream and the transcript ending with it is
    known; else None (nothing to expand, or nothing to expand with)."""
    transcript = state.transcript
    if prev is None or state.previous_available or transcript is None:
        return None
    if prev != state.last_response_id:
        return None
    record.note(Reason.DROPPED_FOR_FULL_REPLAY, "expanded_full_transcript")
    return request.with_items((*transcript, *request.items)).with_previous_response_id(None)


def pending_for(
    prev: str | None, last: str | None, known: dict[str, str] | None
) -> dict[str, str] | None:
    """The pending calls the request must answer: none without a previous response,
    the known set for the session's last response, else unknown (None)."""
    if prev is None:
        return {}
    if prev == last and known is not None:
        return known
    return None


def abort_unanswered_pending(
    pending: dict[str, str] | None, answered: set[str], calls_in_input: set[str]
) -> list[Item]:
    """Aborted outputs for the previous response's pending calls nothing answers."""
    return [
        aborted_output(kind, call_id)
        for call_id, kind in (pending or {}).items()
        if call_id not in answered and call_id not in calls_in_input
    ]


def pair_outputs_with_calls(
    items: Sequence[Item], calls_in_input: set[str], answered: set[str]
) -> tuple[list[Item], int, int]:
    """Each call in the input followed by its output: an output placed before its own
    call is moved right after it (the upstream reads the input in order and would find
    no call for it), and a call nothing answers gets an aborted output there.
    Returns the items, how many outputs moved and how many aborted outputs were added."""
    paired: list[Item] = []
    answered = set(answered)
    moved = injected = 0
    seen_calls: set[str] = set()
    early: dict[str, list[Item]] = {}
    for item in items:
        call_id = item.call_id
        if call_id is None:
            paired.append(item)
            continue
        if _is_output(item) and call_id in calls_in_input and call_id not in seen_calls:
            early.setdefault(call_id, []).append(item)
            continue
        paired.append(item)
        if not _is_call(item):
            continue
        seen_calls.add(call_id)
        if call_id in early:
            moved += len(early[call_id])
            paired.extend(early.pop(call_id))
        elif call_id not in answered:
            paired.append(aborted_output(item.type, call_id))
            answered.add(call_id)
            injected += 1
    return paired, moved, injected


def drop_orphans_and_duplicates(
    items: Sequence[Item], targets: set[str], pending_known: bool
) -> tuple[list[Item], int, int, int]:
    """Keep one output per call. An output for no call in ``targets`` is an orphan and
    dropped when the pending set is known; when it is not, it is kept (the upstream
    knows the calls) and counted as unknown. Returns the kept items and the orphan,
    duplicate and unknown counts."""
    kept: list[Item] = []
    seen: set[str] = set()
    orphans = duplicates = unknown = 0
    for item in items:
        if _is_output(item):
            call_id = item.call_id
            assert call_id is not None
            if call_id in seen:
                duplicates += 1
                continue
            if call_id not in targets:
                if pending_known:
                    orphans += 1
                    continue
                unknown += 1
            seen.add(call_id)
        kept.append(item)
    return kept, orphans, duplicates, unknown


def classify(*, repaired: bool, unknown: bool, previous_unavailable: bool) -> InvariantState:
    if previous_unavailable:
        return InvariantState.NEEDS_FULL_REPLAY
    if repaired:
        return InvariantState.REPAIRED
    if unknown:
        return InvariantState.PENDING_UNKNOWN
    return InvariantState.CONSISTENT


def settle(
    request: RequestSnapshot, prev: str | None, items: Sequence[Item] | None
) -> tuple[RequestSnapshot, str | bytes]:
    """The request with ``prev`` and (when given) ``items``, encoded once. A changed
    request carries its new bytes as ``raw`` and is no longer marked changed, so
    ``encode_request`` on it returns those bytes; an unchanged one is returned as is."""
    result = request
    if prev != request.previous_response_id:
        result = result.with_previous_response_id(prev)
    if items is not None:
        result = result.with_items(items)
    if not result.changed:
        return result, result.raw
    payload = encode_request(result)
    return msgspec.structs.replace(result, raw=payload, changed=False), payload


# The decisions of the common, already-consistent requests (shared: Decision is frozen).
_NEW_CONVERSATION = Decision(InvariantState.CONSISTENT, Reason.OK, (), 0, 0, "none")
_CONTINUED = Decision(InvariantState.CONSISTENT, Reason.OK, (), 0, 0, "kept")
_CONTINUED_WITH_OUTPUTS = Decision(
    InvariantState.CONSISTENT, Reason.KEPT_FOR_OUTPUTS, (), 0, 0, "kept"
)


def _already_consistent(request: RequestSnapshot, state: ContinuationState) -> Decision | None:
    """The decision for a request nothing needs to be done to, found in one pass over its
    items; None sends it through the full steps. Covered: a first turn with no call ids,
    and a continuation of the known last response (available upstream) whose outputs
    answer each of its pending calls exactly once and whose input holds no calls. The
    full steps reach the same decision for these (a property test holds them to it)."""
    prev = request.previous_response_id
    items = request.items
    if prev is None:
        for item in items:
            if item.call_id is not None:
                return None
        return _NEW_CONVERSATION
    pending = state.pending_calls
    if prev != state.last_response_id or not state.previous_available or pending is None:
        return None
    answered: set[str] = set()
    for item in items:
        call_id = item.call_id
        if call_id is None:
            continue
        if item.type not in OUTPUT_TYPES or call_id in answered:
            return None
        answered.add(call_id)
    if len(answered) != len(pending):
        return None
    for call in pending:
        if call.call_id not in answered:
            return None
    return _CONTINUED_WITH_OUTPUTS if answered else _CONTINUED


def normalize(
    request: RequestSnapshot, state: ContinuationState, *, strict: bool = False
) -> NormalizeResult:
    fast = _already_consistent(request, state)
    if fast is not None:
        result, payload = settle(request, request.previous_response_id, None)
        return NormalizeResult(result, payload, fast)
    return normalize_fully(request, state, strict=strict)


def normalize_fully(
    request: RequestSnapshot, state: ContinuationState, *, strict: bool = False
) -> NormalizeResult:
    """Every step, whatever the request (``normalize`` skips them for consistent ones)."""
    record = Record()
    calls_in_input = _ids_of(request.items, OUTPUT_FOR_CALL)
    answered = _ids_of(request.items, OUTPUT_TYPES)
    last = state.last_response_id
    known = (
        None if state.pending_calls is None else {p.call_id: p.kind for p in state.pending_calls}
    )

    prev, prev_action = choose_previous(request, last, known, calls_in_input, record)
    expanded = expand_with_transcript(request, prev, state, record)
    if expanded is not None:
        request, prev, prev_action = expanded, None, "dropped"
        calls_in_input = _ids_of(request.items, OUTPUT_FOR_CALL)
        answered = _ids_of(request.items, OUTPUT_TYPES)
    pending = pending_for(prev, last, known)
    front = abort_unanswered_pending(pending, answered, calls_in_input)
    answered.update(item.call_id for item in front if item.call_id is not None)
    paired, moved, inline = pair_outputs_with_calls(request.items, calls_in_input, answered)
    injected = len(front) + inline
    record.count(Reason.MOVED_OUTPUTS, "moved_outputs", moved)
    record.count(Reason.INJECTED_ABORTED, "injected_aborted", injected)
    kept, orphans, duplicates, unknown = drop_orphans_and_duplicates(
        front + paired, calls_in_input | set(pending or ()), pending is not None
    )
    record.count(Reason.REMOVED_ORPHANS, "removed_orphans", orphans)
    record.count(Reason.REMOVED_DUPLICATES, "removed_duplicates", duplicates)
    if unknown:
        record.note(Reason.PENDING_UNKNOWN)
    if prev is not None and prev_action == "kept":
        if any(_is_output(i) and i.call_id not in calls_in_input for i in kept):
            record.note(Reason.KEPT_FOR_OUTPUTS)
    if prev is not None and not state.previous_available:
        record.note(Reason.PREVIOUS_UNAVAILABLE)

    removed = orphans + duplicates
    repaired = bool(injected or removed or moved)
    invariant = classify(
        repaired=repaired,
        unknown=bool(unknown),
        previous_unavailable=Reason.PREVIOUS_UNAVAILABLE in record.reasons,
    )
    decision = Decision(
        invariant, record.reason(), tuple(record.actions), injected, removed, prev_action
    )
    if strict and repaired:
        raise InvariantViolation(decision, "; ".join(record.actions))
    result, payload = settle(request, prev, kept if repaired or expanded else None)
    return NormalizeResult(result, payload, decision)


def expand_to_full(request: RequestSnapshot, transcript: Sequence[Item]) -> RequestSnapshot:
    """The request with the transcript before its items and no previous_response_id."""
    return request.with_items(tuple(transcript) + request.items).with_previous_response_id(None)


def to_http_body(request: RequestSnapshot) -> bytes:
    """The request as a streamed POST /v1/responses body: no ``type`` or ``generate``.
    A ``previous_response_id`` left on the request is kept: over HTTP the upstream
    continues a stored response by id (an expanded request has none)."""
    body = request.without_fields("type", "generate", "stream").with_field("stream", b"true")
    return encode_request_bytes(body)
