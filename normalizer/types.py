"""Decision record and continuation state types. Enum values are stable: they become
Prometheus labels and log tags."""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum

import msgspec

from normalizer.snapshot import Item, RequestSnapshot


class PendingCall(msgspec.Struct, frozen=True):
    call_id: str
    kind: str  # the call item's type: function_call, custom_tool_call, local_shell_call, ...


class ContinuationState(msgspec.Struct, frozen=True, kw_only=True):
    last_response_id: str | None = None  # the session's last response
    pending_calls: tuple[PendingCall, ...] | None = None  # of last_response_id; None = unknown
    previous_available: bool = True  # False: the upstream lost the previous response's state
    # The whole conversation up to and including last_response_id's output, when the
    # caller has it: a request that continues an unavailable previous response is then
    # expanded to a full one (no previous_response_id) in the same pass.
    transcript: Sequence[Item] | None = None


class InvariantState(StrEnum):
    CONSISTENT = "consistent"  # every call paired, nothing to do
    REPAIRED = "repaired"  # pairing restored (lenient mode)
    PENDING_UNKNOWN = "output_present_pending_unknown"  # outputs answer a previous response whose calls we do not know
    NEEDS_FULL_REPLAY = "needs_full_replay"  # the previous response is gone and the input needs it


class Reason(StrEnum):
    OK = "ok"
    INFERRED_PREVIOUS = "inferred_previous_response_id"
    ALIGNED_PREVIOUS = "aligned_previous_response_id"
    INJECTED_ABORTED = "injected_aborted_outputs"
    REMOVED_ORPHANS = "removed_orphan_outputs"
    REMOVED_DUPLICATES = "removed_duplicate_outputs"
    MOVED_OUTPUTS = "moved_outputs_after_calls"
    KEPT_FOR_OUTPUTS = "kept_previous_response_id_for_outputs"
    PENDING_UNKNOWN = "pending_calls_unknown"
    PREVIOUS_UNAVAILABLE = "previous_response_unavailable"
    DROPPED_FOR_FULL_REPLAY = "dropped_previous_response_id_full_replay"


class Decision(msgspec.Struct, frozen=True):
    state: InvariantState
    reason: Reason
    actions: tuple[str, ...] = ()
    injected: int = 0
    removed: int = 0
    previous_response_id_action: str = "none"  # kept | inferred | aligned | dropped | none


class NormalizeResult(msgspec.Struct, frozen=True):
    """``payload`` is the request as sent, encoded once: ``request.raw`` is the same
    object, so ``encode_request(request)`` returns it without encoding again (and an
    unchanged request keeps the very frame that came in)."""

    request: RequestSnapshot
    payload: str | bytes
    decision: Decision


class InvariantViolation(Exception):
    """Strict mode: what lenient mode would have repaired (Codex debug builds panic)."""

    def __init__(self, decision: Decision, detail: str) -> None:
        self.decision = decision
        super().__init__(f"{decision.reason.value}: {detail}")
