"""Where a turn continues from: the socket's own state without a store round trip when it
suffices, the shared store otherwise, and the session's last response as the alignment or
inference target."""

from __future__ import annotations

from typing import Any

from gateway.forward.continuation import Continuation, SocketState, resolve_continuation
from normalizer import decode_request
from statestore import Continuation as StoreContinuation
from statestore import StateStore, TurnBinding, open_store
from tests.gateway.test_ctx_pool import create


class CountingStore:
    """A memory store that counts lookups (the local fast path makes none)."""

    def __init__(self) -> None:
        self.inner: StateStore = open_store("memory://")
        self.lookups: list[str | None] = []
        self.forgotten: set[str] = set()  # responses whose record has expired

    async def bind(self, response_id: str, account_id: str, **fields: Any) -> None:
        await self.inner.bind_turn(
            TurnBinding(group="g", account_id=account_id, response_id=response_id, **fields)
        )

    async def lookup(self, group: str, *, response_id: str | None, session_key: str | None) -> Any:
        self.lookups.append(response_id)
        if response_id in self.forgotten:
            return StoreContinuation()
        return await self.inner.lookup(group, response_id=response_id, session_key=session_key)


LOCAL = SocketState(
    response_id="resp_local", account_id="acct-local", conn_id="c1", pending={"call_1": "x"}
)


async def resolve(
    states: CountingStore, local: SocketState, session: str | None = "s", **fields: Any
) -> Continuation:
    request = decode_request(create(**fields))
    return await resolve_continuation(states, "g", session, local, request)  # type: ignore[arg-type]


async def test_continuing_the_socket_own_response_needs_no_lookup() -> None:
    store = CountingStore()
    for fields in ({"previous_response_id": "resp_local"}, {}):
        found = await resolve(store, LOCAL, **fields)
        assert found == Continuation(
            "resp_local", "acct-local", {"call_1": "x"}, "c1", "resp_local"
        )
    assert store.lookups == []


async def test_a_new_socket_finds_the_previous_response_in_the_store() -> None:
    store = CountingStore()
    await store.bind("resp_1", "acct-1", session_key="s", pending_calls={}, conn_id="c9")
    found = await resolve(store, SocketState(), previous_response_id="resp_1")
    assert found == Continuation("resp_1", "acct-1", {}, "c9", "resp_1")
    assert store.lookups == ["resp_1"]


async def test_an_unknown_previous_response_is_continued_as_asked() -> None:
    store = CountingStore()
    found = await resolve(store, SocketState(), session=None, previous_response_id="resp_x")
    assert found == Continuation("resp_x", None, None, None, None)


async def test_a_store_false_continuation_of_an_older_response_aligns_to_the_socket_last() -> None:
    store = CountingStore()
    found = await resolve(store, LOCAL, previous_response_id="resp_older")
    assert found == Continuation("resp_local", "acct-local", {"call_1": "x"}, "c1", "resp_local")
    assert store.lookups == ["resp_older"]


async def test_a_stored_response_is_continued_as_asked_even_if_not_the_last() -> None:
    store = CountingStore()
    await store.bind("resp_older", "acct-2", stored=True, pending_calls={})
    found = await resolve(store, LOCAL, previous_response_id="resp_older", store=True)
    assert found == Continuation("resp_older", "acct-2", {}, None, "resp_local", True)


async def test_a_new_socket_aligns_to_the_session_last_response_from_the_store() -> None:
    store = CountingStore()
    await store.bind("resp_1", "acct-1", session_key="s", pending_calls={})
    await store.bind("resp_2", "acct-2", session_key="s", pending_calls={"call_2": "x"})
    found = await resolve(store, SocketState(), previous_response_id="resp_1")
    assert found == Continuation("resp_2", "acct-2", {"call_2": "x"}, None, "resp_2")
    assert store.lookups == ["resp_1", "resp_2"]


async def test_no_previous_response_infers_the_session_last() -> None:
    store = CountingStore()
    await store.bind("resp_1", "acct-1", session_key="s", pending_calls={}, stored=True)
    found = await resolve(store, SocketState())
    assert found == Continuation("resp_1", "acct-1", {}, None, "resp_1", True)
    assert store.lookups == [None, "resp_1"]


async def test_an_anchor_the_store_forgot_keeps_the_account_of_the_first_lookup() -> None:
    store = CountingStore()
    await store.bind("resp_1", "acct-1", session_key="s", pending_calls={})
    await store.bind("resp_2", "acct-1", session_key="s", pending_calls={})
    store.forgotten.add("resp_2")
    found = await resolve(store, SocketState(), previous_response_id="resp_1")
    assert found == Continuation("resp_2", "acct-1", None, None, "resp_2")


def test_aligned_continues_the_session_last_with_nothing_known_of_its_calls() -> None:
    start = Continuation("resp_1", "acct-1", {"c": "x"}, "c1", "resp_2", True)
    assert start.aligned() == Continuation("resp_2", "acct-1", None, None, "resp_2", True)


def test_elsewhere_keeps_the_conversation_and_drops_the_socket() -> None:
    start = Continuation("resp_1", "acct-1", {"c": "x"}, "c1", "resp_2", True)
    assert start.elsewhere("acct-9") == Continuation(
        "resp_1", "acct-9", {"c": "x"}, None, "resp_2", False
    )
