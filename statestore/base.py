"""The StateStore protocol, its records and hooks (one small interface; the backend is
picked from the URL scheme by ``statestore.open``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import msgspec

from statestore.transcripts import TranscriptDelta


class TurnBinding(msgspec.Struct, frozen=True, kw_only=True):
    """Everything one finished turn leaves behind, written in one round trip."""

    group: str
    account_id: str
    response_id: str
    session_key: str | None = None
    pending_calls: dict[str, str] = {}  # call_id -> call item type; {} = known: none pending
    stored: bool = False  # the upstream stored the response: any socket can continue it
    turn_state: str | None = None
    conn_id: str | None = None  # in-process only: it means nothing on another instance
    # Durable transcript: this turn's delta appended to the session's list (a delta with
    # no previous response resets it); drop_transcript deletes the list instead.
    transcript: TranscriptDelta | None = None
    drop_transcript: bool = False


class Continuation(msgspec.Struct, frozen=True, kw_only=True):
    """What the next turn needs to know about the previous response and the session."""

    account_id: str | None = None
    pending_calls: dict[str, str] | None = None  # None: unknown
    stored: bool = False  # the response was stored upstream (store: true)
    session_last_response_id: str | None = None
    turn_state: str | None = None
    conn_id: str | None = None  # local only
    degraded: bool = False  # Redis failed or timed out: the answer is local data only
    source: str = "miss"  # "cache" | "redis" | "mixed" | "miss"


class BindOutcome(msgspec.Struct, frozen=True, kw_only=True):
    ok: bool
    degraded: bool = False
    error: str | None = None


class StoreHooks(Protocol):
    """Metrics callbacks; the gateway implements them (this package never imports it)."""

    def on_op(self, op: str, seconds: float, ok: bool) -> None: ...

    def on_cache(self, hit: bool) -> None: ...

    def on_bind_failure(
        self, group: str, account_id: str, response_id: str, error: str
    ) -> None: ...


class NoHooks:
    """The default: count nothing."""

    def on_op(self, op: str, seconds: float, ok: bool) -> None:
        return None

    def on_cache(self, hit: bool) -> None:
        return None

    def on_bind_failure(self, group: str, account_id: str, response_id: str, error: str) -> None:
        return None


class StateStore(Protocol):
    """Continuation state. No method raises because the shared backend is down:
    reads answer from local data with ``degraded=True``, binds keep the local write."""

    @property
    def url_scheme(self) -> str: ...

    async def start(self) -> None: ...

    async def bind_turn(self, binding: TurnBinding) -> BindOutcome: ...

    def bind_turn_nowait(self, binding: TurnBinding) -> BindOutcome | None:
        """The bind done at once when it needs no I/O (an in-process store), else None:
        then the caller awaits ``bind_turn``."""
        ...

    async def lookup(
        self, group: str, *, response_id: str | None, session_key: str | None
    ) -> Continuation: ...

    async def get_response_account(self, group: str, response_id: str) -> str | None: ...

    async def get_pending_calls(self, group: str, response_id: str) -> dict[str, str] | None: ...

    async def get_session_last_response(self, group: str, session_key: str) -> str | None: ...

    async def get_turn_state(self, group: str, session_key: str) -> str | None: ...

    def get_conn_id(self, response_id: str) -> str | None: ...

    async def load_transcript(
        self, group: str, session_key: str
    ) -> list[TranscriptDelta] | None: ...

    async def forget_response(self, group: str, response_id: str) -> None: ...

    async def publish_cooldown(
        self, group: str, account_id: str, until_epoch_s: float, ttl_s: float
    ) -> bool:
        """Tell every instance the account is rate-limited until ``until_epoch_s`` (wall
        clock); the record lives ``ttl_s``. False when the shared backend did not take it."""
        ...

    async def read_cooldowns(self, group: str, account_ids: Sequence[str]) -> dict[str, float]:
        """The published deadlines (wall-clock epoch seconds) of those accounts that have
        one, in one round trip. On a backend failure: what this process knows."""
        ...

    async def ping(self) -> bool: ...

    async def aclose(self) -> None: ...
