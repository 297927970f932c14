"""Where a turn continues from: this client socket's own state first, the shared store
only for what the socket cannot know (a new socket, another instance's response)."""

from __future__ import annotations

import msgspec

from normalizer import RequestSnapshot
from statestore import StateStore


class SocketState(msgspec.Struct):
    """What this client socket knows about its own conversation, updated synchronously
    at each terminal event: the next turn never waits on the store for it."""

    response_id: str | None = None
    account_id: str | None = None
    conn_id: str | None = None
    pending: dict[str, str] | None = None
    stored: bool = False  # the response was stored upstream: any socket can continue it


class Continuation(msgspec.Struct, frozen=True):
    anchor: str | None  # the response this turn continues (after alignment)
    account_id: str | None  # the account that owns the anchor, when known
    pending: dict[str, str] | None  # the anchor's unanswered calls; None = unknown
    conn_id: str | None  # the upstream socket that produced the anchor (this process only)
    session_last: str | None  # the session's newest response (alignment target)
    stored: bool = False

    @classmethod
    def of_socket(cls, state: SocketState, session_last: str | None) -> Continuation:
        return cls(
            state.response_id,
            state.account_id,
            state.pending,
            state.conn_id,
            session_last,
            state.stored,
        )

    def aligned(self) -> Continuation:
        """Continue the session's last response instead (after previous_response_not_found)."""
        return Continuation(
            self.session_last, self.account_id, None, None, self.session_last, self.stored
        )

    def elsewhere(self, account_id: str) -> Continuation:
        """The same conversation served by another account: nothing of the old socket."""
        return Continuation(self.anchor, account_id, self.pending, None, self.session_last, False)


def local_continuation(local: SocketState, request: RequestSnapshot) -> Continuation | None:
    """The continuation this socket knows by itself (it produced the anchor), else None:
    the common turn needs no store lookup and no await."""
    last = local.response_id
    prev = request.previous_response_id
    if last is not None and (prev == last or prev is None):
        return Continuation.of_socket(local, last)
    return None


async def resolve_continuation(
    store: StateStore,
    group: str,
    session_key: str | None,
    local: SocketState,
    request: RequestSnapshot,
) -> Continuation:
    known = local_continuation(local, request)
    if known is not None:
        return known
    prev = request.previous_response_id
    last = local.response_id
    found = await store.lookup(group, response_id=prev, session_key=session_key)
    session_last = last or found.session_last_response_id
    anchor = prev
    if session_last and (prev is None or (request.store is not True and prev != session_last)):
        anchor = session_last  # inference / store:false alignment target (normalizer decides)
    if anchor == prev:
        return Continuation(
            anchor,
            found.account_id,
            found.pending_calls,
            found.conn_id,
            session_last,
            found.stored,
        )
    if anchor == last:
        return Continuation.of_socket(local, session_last)
    assert anchor is not None
    other = await store.lookup(group, response_id=anchor, session_key=None)
    return Continuation(
        anchor,
        other.account_id or found.account_id,
        other.pending_calls,
        other.conn_id,
        session_last,
        other.stored,
    )
