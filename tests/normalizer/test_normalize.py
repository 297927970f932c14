"""Property and example tests for the pre-send normalizer: pairing repair, the
previous_response_id rules, byte-identical pass-through.

The pairing oracle is the simulator's own rule (``sim.model.pairing_error``):
"would the upstream accept this context?", checked on the previous response's context
plus the normalized request.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from normalizer import (
    ContinuationState,
    InvariantState,
    InvariantViolation,
    PendingCall,
    Reason,
    decode_request,
    encode_request,
    expand_to_full,
    make_item,
    normalize,
    to_http_body,
)
from sim.model import pairing_error

CALL_KINDS = ("function_call", "custom_tool_call", "local_shell_call")
OUTPUT_OF = {
    "function_call": "function_call_output",
    "custom_tool_call": "custom_tool_call_output",
    "local_shell_call": "function_call_output",
}
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def call(kind: str, call_id: str) -> dict[str, Any]:
    return {
        "type": kind,
        "call_id": call_id,
        "name": "exec_command",
        "arguments": "{}",
        "id": f"fc_{call_id}",
    }


def output(kind: str, call_id: str, text: str = "ok") -> dict[str, Any]:
    return {"type": OUTPUT_OF[kind], "call_id": call_id, "output": text}


def user(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


def frame(items: list[dict[str, Any]], **fields: Any) -> bytes:
    return json.dumps({"type": "response.create", "model": "m", "input": items, **fields}).encode()


def sent_items(payload: bytes) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = json.loads(payload)["input"]
    return items


def oracle_ok(prev_context: list[dict[str, Any]], payload: bytes) -> str | None:
    return pairing_error(prev_context + sent_items(payload))


# -- strategies --------------------------------------------------------------------------

call_ids = st.text(alphabet="abcdef0123456789", min_size=4, max_size=8).map(lambda s: f"call_{s}")


@st.composite
def pending_and_input(draw: st.DrawFn) -> tuple[list[tuple[str, str]], list[dict[str, Any]]]:
    """A previous response's pending calls and a client's incremental input."""
    ids = draw(st.lists(call_ids, min_size=0, max_size=5, unique=True))
    pending = [(cid, draw(st.sampled_from(CALL_KINDS))) for cid in ids]
    items: list[dict[str, Any]] = []
    for cid, kind in pending:
        if draw(st.booleans()):  # answered, or interrupted (no output)
            items.append(output(kind, cid))
            if draw(st.integers(0, 9)) == 0:
                items.append(output(kind, cid, "duplicate"))
    for _ in range(draw(st.integers(0, 2))):  # orphans
        items.append(output("function_call", draw(call_ids.filter(lambda c: c not in ids))))
    for _ in range(draw(st.integers(0, 2))):  # new calls inside the input, maybe unanswered
        cid = draw(call_ids.filter(lambda c: c not in ids))
        kind = draw(st.sampled_from(CALL_KINDS))
        items.append(call(kind, cid))
        if draw(st.booleans()):
            items.append(output(kind, cid))
    items.append(user(draw(st.text(max_size=20))))
    if draw(st.booleans()):
        items.append({"type": "x_unknown_item", "payload": {"keep": [1, 2, 3]}, "call_id": None})
    draw(st.randoms()).shuffle(items)
    return pending, items


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=6,
)


# -- properties --------------------------------------------------------------------------


@SETTINGS
@given(pending_and_input())
def test_every_call_gets_exactly_one_output_and_every_output_a_call(
    case: tuple[list[tuple[str, str]], list[dict[str, Any]]],
) -> None:
    pending, items = case
    prev_context = [user("start")] + [call(kind, cid) for cid, kind in pending]
    state = ContinuationState(
        last_response_id="resp_1", pending_calls=tuple(PendingCall(c, k) for c, k in pending)
    )
    result = normalize(decode_request(frame(items, previous_response_id="resp_1")), state)
    assert oracle_ok(prev_context, result.payload) is None
    assert result.request.previous_response_id == "resp_1"


@SETTINGS
@given(pending_and_input())
def test_normalizing_twice_equals_once(
    case: tuple[list[tuple[str, str]], list[dict[str, Any]]],
) -> None:
    pending, items = case
    state = ContinuationState(
        last_response_id="resp_1", pending_calls=tuple(PendingCall(c, k) for c, k in pending)
    )
    once = normalize(decode_request(frame(items, previous_response_id="resp_1")), state)
    twice = normalize(once.request, state)
    assert twice.payload == once.payload
    assert twice.decision.injected == 0 and twice.decision.removed == 0
    assert twice.decision.state is InvariantState.CONSISTENT


@SETTINGS
@given(pending_and_input())
def test_nothing_valid_is_removed_and_kept_items_are_byte_identical(
    case: tuple[list[tuple[str, str]], list[dict[str, Any]]],
) -> None:
    pending, items = case
    state = ContinuationState(
        last_response_id="resp_1", pending_calls=tuple(PendingCall(c, k) for c, k in pending)
    )
    request = decode_request(frame(items, previous_response_id="resp_1"))
    result = normalize(request, state)
    valid_targets = {cid for cid, _ in pending} | {
        i.call_id for i in request.items if i.type in CALL_KINDS
    }
    seen: set[str | None] = set()
    expected = []
    for item in request.items:
        is_output = item.type.endswith("_output") and item.call_id is not None
        if is_output and (item.call_id not in valid_targets or item.call_id in seen):
            continue  # orphan or duplicate: the only removals allowed
        if is_output:
            seen.add(item.call_id)
        expected.append(bytes(item.raw))
    kept = [bytes(i.raw) for i in result.request.items if bytes(i.raw) in set(expected)]
    assert sorted(kept) == sorted(expected)  # every valid item survives, byte-identical
    non_outputs = [bytes(i.raw) for i in request.items if not i.type.endswith("_output")]
    assert [b for b in kept if b in set(non_outputs)] == non_outputs  # only outputs may move
    assert result.decision.removed == len(request.items) - len(expected)


@SETTINGS
@given(
    st.dictionaries(
        st.text(min_size=1, max_size=8).filter(
            lambda k: (
                k
                not in {
                    "type",
                    "input",
                    "previous_response_id",
                    "model",
                    "store",
                    "generate",
                    "stream",
                }
            )
        ),
        json_values,
        max_size=4,
    ),
    pending_and_input(),
)
def test_unknown_fields_survive_byte_identical(
    extra: dict[str, Any], case: tuple[list[tuple[str, str]], list[dict[str, Any]]]
) -> None:
    pending, items = case
    raw = frame(items, previous_response_id="resp_1", **extra)
    state = ContinuationState(
        last_response_id="resp_1", pending_calls=tuple(PendingCall(c, k) for c, k in pending)
    )
    result = normalize(decode_request(raw), state)
    before = msgspec.json.decode(raw, type=dict[str, msgspec.Raw])
    after = msgspec.json.decode(result.payload, type=dict[str, msgspec.Raw])
    for key in extra:
        assert bytes(after[key]) == bytes(before[key])
    assert list(after)[: len(before)] == list(before)  # key order preserved


@SETTINGS
@given(pending_and_input(), st.booleans())
def test_previous_response_id_is_never_dropped(
    case: tuple[list[tuple[str, str]], list[dict[str, Any]]], available: bool
) -> None:
    pending, items = case
    state = ContinuationState(
        last_response_id="resp_1",
        pending_calls=tuple(PendingCall(c, k) for c, k in pending),
        previous_available=available,
    )
    result = normalize(decode_request(frame(items, previous_response_id="resp_1")), state)
    assert result.request.previous_response_id == "resp_1"
    if not available:
        assert result.decision.state is InvariantState.NEEDS_FULL_REPLAY
        assert result.decision.reason is Reason.PREVIOUS_UNAVAILABLE


@SETTINGS
@given(pending_and_input())
def test_an_unavailable_previous_response_is_expanded_with_the_transcript_in_one_pass(
    case: tuple[list[tuple[str, str]], list[dict[str, Any]]],
) -> None:
    """The transcript ends with the previous response's calls; the expanded request has
    no previous_response_id, stands alone for the upstream's pairing rules, and keeps
    the whole conversation before the client's new items."""
    pending, items = case
    history = [user("earlier"), *(call(kind, cid) for cid, kind in pending)]
    transcript = tuple(make_item(item) for item in history)
    state = ContinuationState(
        last_response_id="resp_1",
        pending_calls=tuple(PendingCall(c, k) for c, k in pending),
        previous_available=False,
        transcript=transcript,
    )
    result = normalize(decode_request(frame(items, previous_response_id="resp_1")), state)
    sent = sent_items(result.payload)
    assert result.request.previous_response_id is None
    assert "previous_response_id" not in json.loads(result.payload)
    assert result.decision.previous_response_id_action == "dropped"
    assert result.decision.state is not InvariantState.NEEDS_FULL_REPLAY
    assert pairing_error(sent) is None
    assert sent[0] == history[0]
    assert encode_request(result.request) is result.payload


def test_expansion_needs_the_transcript_of_that_very_response() -> None:
    transcript = (make_item(user("earlier")),)
    request = decode_request(frame([user("next")], previous_response_id="resp_old", store=True))
    state = ContinuationState(
        last_response_id="resp_1", previous_available=False, transcript=transcript
    )
    result = normalize(request, state)
    # A stored response is continued by id (store: true is never aligned): nothing to expand.
    assert result.request.previous_response_id == "resp_old"
    available = ContinuationState(last_response_id="resp_1", transcript=transcript)
    kept = normalize(decode_request(frame([user("x")], previous_response_id="resp_1")), available)
    assert kept.request.previous_response_id == "resp_1"
    assert kept.payload is kept.request.raw


def test_expansion_answers_a_pending_call_left_unanswered_right_after_it() -> None:
    transcript = (make_item(user("run")), make_item(call("function_call", "call_1")))
    state = ContinuationState(
        last_response_id="resp_1",
        pending_calls=(PendingCall("call_1", "function_call"),),
        previous_available=False,
        transcript=transcript,
    )
    result = normalize(
        decode_request(frame([user("never mind")], previous_response_id="resp_1")), state
    )
    assert [i.get("type") for i in sent_items(result.payload)] == [
        "message",
        "function_call",
        "function_call_output",
        "message",
    ]
    assert result.decision.reason is Reason.DROPPED_FOR_FULL_REPLAY
    assert result.decision.injected == 1
    assert result.decision.actions == ("expanded_full_transcript", "injected_aborted:1")


# -- a conversation driven turn by turn --------------------------------------------------


class Conversation(RuleBasedStateMachine):
    """A model upstream tracks the true context; the client interrupts, retries and
    forgets ids; after every normalized request the upstream must accept it."""

    def __init__(self) -> None:
        super().__init__()
        self.context: list[dict[str, Any]] = [user("hello")]
        self.pending: list[tuple[str, str]] = []
        self.last_id = "resp_0"
        self.turn = 0
        self.last_error: str | None = None
        self.responded = False

    def _send(
        self, items: list[dict[str, Any]], *, with_prev: bool, prev: str | None = None
    ) -> None:
        state = ContinuationState(
            last_response_id=self.last_id,
            pending_calls=tuple(PendingCall(c, k) for c, k in self.pending),
        )
        fields = {"previous_response_id": prev or self.last_id} if with_prev else {}
        result = normalize(decode_request(frame(items, store=False, **fields)), state)
        chained = result.request.previous_response_id is not None
        base = self.context if chained else []
        self.last_error = pairing_error(base + sent_items(result.payload))
        assert self.last_error is None, self.last_error
        assert normalize(result.request, state).payload == result.payload
        # The upstream answers: the request's items join the context.
        self.context = base + sent_items(result.payload)
        self.turn += 1
        self.last_id = f"resp_{self.turn}"
        self.pending = []
        self.responded = False

    @precondition(lambda self: not self.responded)
    @rule(n=st.integers(0, 3), kinds=st.lists(st.sampled_from(CALL_KINDS), min_size=3, max_size=3))
    def upstream_makes_calls(self, n: int, kinds: list[str]) -> None:
        """The response to the last request ends with ``n`` calls (one response per request)."""
        self.responded = True
        new = [(f"call_{self.turn}_{i}", kinds[i]) for i in range(n)]
        self.context += [call(kind, cid) for cid, kind in new]
        self.pending = new

    @rule(answer=st.lists(st.booleans(), min_size=3, max_size=3), omit_prev=st.booleans())
    def client_answers_some(self, answer: list[bool], omit_prev: bool) -> None:
        items = [output(k, c) for (c, k), yes in zip(self.pending, answer, strict=False) if yes]
        if not items or not omit_prev:
            items.append(user("next"))
        self._send(items, with_prev=not omit_prev or not items)

    @rule()
    def client_sends_orphan(self) -> None:
        self._send([output("function_call", "call_never_made"), user("oops")], with_prev=True)

    @rule()
    def client_uses_stale_id(self) -> None:
        self._send([user("stale")], with_prev=True, prev="resp_stale")

    @invariant()
    def upstream_never_rejected(self) -> None:
        assert self.last_error is None


TestConversation = Conversation.TestCase
TestConversation.settings = settings(max_examples=40, stateful_step_count=12, deadline=None)


# -- examples named after the Codex cases ---------------------------------------------------


def test_aborted_synthesis_for_each_call_kind() -> None:
    pending = (
        PendingCall("c1", "function_call"),
        PendingCall("c2", "custom_tool_call"),
        PendingCall("c3", "local_shell_call"),
        PendingCall("c4", "tool_search_call"),
    )
    result = normalize(
        decode_request(frame([user("moving on")], previous_response_id="r1")),
        ContinuationState(last_response_id="r1", pending_calls=pending),
    )
    assert sent_items(result.payload)[:4] == [
        {"type": "function_call_output", "call_id": "c1", "output": "aborted"},
        {"type": "custom_tool_call_output", "call_id": "c2", "output": "aborted"},
        {"type": "function_call_output", "call_id": "c3", "output": "aborted"},
        {
            "type": "tool_search_output",
            "call_id": "c4",
            "status": "completed",
            "execution": "client",
            "tools": [],
        },
    ]
    assert result.decision.state is InvariantState.REPAIRED
    assert result.decision.reason is Reason.INJECTED_ABORTED
    assert result.decision.injected == 4


def test_aborted_synthesis_inline_goes_right_after_the_call() -> None:
    items = [user("a"), call("function_call", "c9"), user("b")]
    result = normalize(decode_request(frame(items)), ContinuationState())
    assert [i.get("type") for i in sent_items(result.payload)] == [
        "message",
        "function_call",
        "function_call_output",
        "message",
    ]


def test_output_before_its_call_is_moved_after_it() -> None:
    items = [output("function_call", "c7"), call("function_call", "c7"), user("go")]
    result = normalize(decode_request(frame(items)), ContinuationState())
    assert [i.get("type") for i in sent_items(result.payload)] == [
        "function_call",
        "function_call_output",
        "message",
    ]
    assert result.decision.reason is Reason.MOVED_OUTPUTS
    assert result.decision.injected == 0 and result.decision.state is InvariantState.REPAIRED


def test_orphan_cleanup_with_known_pending() -> None:
    items = [output("function_call", "ghost"), user("hi")]
    result = normalize(
        decode_request(frame(items, previous_response_id="r1")),
        ContinuationState(last_response_id="r1", pending_calls=()),
    )
    assert sent_items(result.payload) == [user("hi")]
    assert result.decision.reason is Reason.REMOVED_ORPHANS and result.decision.removed == 1


def test_orphan_cleanup_without_previous_response() -> None:
    result = normalize(
        decode_request(frame([output("function_call", "ghost"), user("hi")])), ContinuationState()
    )
    assert sent_items(result.payload) == [user("hi")]


def test_output_present_but_pending_unknown_keeps_output_and_id() -> None:
    raw = frame([output("function_call", "call_x")], previous_response_id="r1")
    result = normalize(
        decode_request(raw), ContinuationState(last_response_id="r1", pending_calls=None)
    )
    assert result.payload is raw  # untouched
    assert result.decision.state is InvariantState.PENDING_UNKNOWN
    assert result.decision.reason is Reason.PENDING_UNKNOWN
    assert result.request.previous_response_id == "r1"


def test_strict_raises_where_lenient_repairs() -> None:
    raw = frame([user("x")], previous_response_id="r1")
    state = ContinuationState(
        last_response_id="r1", pending_calls=(PendingCall("c1", "function_call"),)
    )
    with pytest.raises(InvariantViolation) as err:
        normalize(decode_request(raw), state, strict=True)
    assert err.value.decision.injected == 1
    lenient = normalize(decode_request(raw), state)
    assert lenient.decision.state is InvariantState.REPAIRED


def test_strict_accepts_inference_and_alignment() -> None:
    state = ContinuationState(
        last_response_id="r2", pending_calls=(PendingCall("c1", "function_call"),)
    )
    inferred = normalize(decode_request(frame([output("function_call", "c1")])), state, strict=True)
    assert inferred.request.previous_response_id == "r2"
    assert inferred.decision.reason is Reason.INFERRED_PREVIOUS
    aligned = normalize(
        decode_request(
            frame([output("function_call", "c1")], previous_response_id="r1", store=False)
        ),
        state,
        strict=True,
    )
    assert aligned.request.previous_response_id == "r2"
    assert aligned.decision.previous_response_id_action == "aligned"


def test_store_true_is_not_aligned() -> None:
    state = ContinuationState(last_response_id="r2", pending_calls=())
    result = normalize(
        decode_request(frame([user("branch")], previous_response_id="r1", store=True)), state
    )
    assert result.request.previous_response_id == "r1"
    assert result.payload == result.request.raw


def test_warmup_is_not_given_a_previous_id() -> None:
    state = ContinuationState(
        last_response_id="r9", pending_calls=(PendingCall("c1", "function_call"),)
    )
    warm = normalize(
        decode_request(
            frame([{"type": "message", "role": "developer", "content": "base"}], generate=False)
        ),
        state,
    )
    assert warm.request.previous_response_id is None
    assert warm.payload == warm.request.raw


def test_unchanged_request_returns_the_identical_bytes_object() -> None:
    request = decode_request(frame([user("hi")]))
    result = normalize(request, ContinuationState())
    assert result.payload is request.raw
    assert encode_request(result.request) is request.raw


def test_a_repaired_request_is_encoded_once_and_carries_its_bytes() -> None:
    request = decode_request(frame([call("function_call", "c1"), user("hi")]))
    result = normalize(request, ContinuationState())
    assert result.decision.state is InvariantState.REPAIRED
    assert result.request.raw is result.payload
    assert encode_request(result.request) is result.payload  # no second encoding
    assert [i["type"] for i in sent_items(result.payload)] == [
        "function_call",
        "function_call_output",
        "message",
    ]
    # Still editable: a later change re-encodes from the repaired items.
    http = json.loads(to_http_body(result.request))
    assert [i["type"] for i in http["input"]] == [
        "function_call",
        "function_call_output",
        "message",
    ]
    assert http["stream"] is True and "type" not in http


def test_expand_to_full_and_http_body() -> None:
    request = decode_request(
        frame([user("second")], previous_response_id="r1", generate=True, stream=False)
    )
    full = expand_to_full(
        request,
        [
            make_item(user("first")),
            make_item({"type": "message", "role": "assistant", "content": "a1"}),
        ],
    )
    assert full.previous_response_id is None
    payload = json.loads(encode_request(full))
    assert [i["content"] for i in payload["input"]][1:] == [
        "a1",
        [{"type": "input_text", "text": "second"}],
    ]
    body = json.loads(to_http_body(full))
    assert "type" not in body and "generate" not in body and "previous_response_id" not in body
    assert body["stream"] is True
    # A stored response continued by id keeps its id over HTTP.
    by_id = json.loads(to_http_body(request))
    assert by_id["previous_response_id"] == "r1" and "generate" not in by_id


def test_string_input_survives_and_is_expandable() -> None:
    raw = b'{"type":"response.create","model":"m","input":"just text"}'
    request = decode_request(raw)
    assert request.input_is_string and len(request.items) == 1
    assert normalize(request, ContinuationState()).payload is raw
    full = expand_to_full(request.with_previous_response_id("r1"), [make_item(user("before"))])
    assert json.loads(encode_request(full))["input"][1]["content"][0]["text"] == "just text"


@st.composite
def already_consistent(draw: st.DrawFn) -> tuple[list[tuple[str, str]], list[dict[str, Any]]]:
    """A continuation whose outputs answer each pending call once, among messages (and
    now and then one output twice)."""
    ids = draw(st.lists(call_ids, min_size=0, max_size=4, unique=True))
    pending = [(cid, draw(st.sampled_from(CALL_KINDS))) for cid in ids]
    items: list[dict[str, Any]] = [output(kind, cid) for cid, kind in pending]
    items += [user(draw(st.text(max_size=8))) for _ in range(draw(st.integers(0, 2)))]
    if pending and draw(st.integers(0, 3)) == 0:  # one answered twice: not consistent
        cid, kind = draw(st.sampled_from(pending))
        items.append(output(kind, cid, "again"))
    draw(st.randoms()).shuffle(items)
    return pending, items


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(pending_and_input(), already_consistent()),
    st.sampled_from([None, "resp_1", "resp_0"]),  # previous_response_id sent
    st.sampled_from([None, "resp_1"]),  # the last response known
    st.booleans(),  # pending calls known
    st.booleans(),  # previous response available upstream
    st.sampled_from([None, True, False]),  # store
)
def test_the_shortcut_for_consistent_requests_decides_as_the_full_steps_do(
    case: tuple[list[tuple[str, str]], list[dict[str, Any]]],
    prev: str | None,
    last: str | None,
    pending_known: bool,
    available: bool,
    store: bool | None,
) -> None:
    from normalizer.normalize import normalize_fully

    pending, items = case
    fields: dict[str, Any] = {"previous_response_id": prev}
    if store is not None:
        fields["store"] = store
    request = decode_request(frame(items, **fields))
    state = ContinuationState(
        last_response_id=last,
        pending_calls=tuple(PendingCall(c, k) for c, k in pending) if pending_known else None,
        previous_available=available,
    )
    quick, full = normalize(request, state), normalize_fully(request, state)
    assert quick.decision == full.decision
    assert quick.payload == full.payload
    assert quick.request == full.request
