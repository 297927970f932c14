"""In-process continuation state: the memory backend, and the hot cache in front of Redis."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import msgspec

from statestore.base import TurnBinding
from statestore.ttlcache import TTLCache


class ResponseRecord(msgspec.Struct, frozen=True):
    """One response's binding; account and pending calls are always written together."""

    account_id: str
    pending_calls: dict[str, str] | None  # None: unknown (e.g. written by an older writer)
    stored: bool = False


class LocalState:
    """The continuation mappings, each a bounded TTL'd LRU on one clock. Keys carry the group
    (tenant isolation); the conn map is keyed by response id alone (it is per process)."""

    __slots__ = ("conn", "cooldowns", "last", "responses", "ttl_s", "turn_state")

    def __init__(self, max_entries: int, ttl_s: float, clock: Callable[[], float]) -> None:
        self.ttl_s = ttl_s
        self.responses = TTLCache[tuple[str, str], ResponseRecord](max_entries, clock)
        self.last = TTLCache[tuple[str, str], str](max_entries, clock)
        self.turn_state = TTLCache[tuple[str, str], str](max_entries, clock)
        self.conn = TTLCache[str, str](max_entries, clock)
        # (group, account) -> cooldown deadline in wall-clock epoch seconds
        self.cooldowns = TTLCache[tuple[str, str], float](max_entries, clock)

    def bind(self, b: TurnBinding) -> None:
        ttl = self.ttl_s
        self.responses.set(
            (b.group, b.response_id),
            ResponseRecord(b.account_id, dict(b.pending_calls), b.stored),
            ttl,
        )
        if b.conn_id:
            self.conn.set(b.response_id, b.conn_id, ttl)
        if b.session_key:
            sk = (b.group, b.session_key)
            self.last.set(sk, b.response_id, ttl)
            if b.turn_state:
                self.turn_state.set(sk, b.turn_state, ttl)

    def response(self, group: str, response_id: str) -> ResponseRecord | None:
        return self.responses.get((group, response_id))

    def session(self, group: str, session_key: str) -> tuple[str | None, str | None]:
        sk = (group, session_key)
        return self.last.get(sk), self.turn_state.get(sk)

    def forget(self, group: str, response_id: str) -> None:
        self.responses.delete((group, response_id))
        self.conn.delete(response_id)

    def cooldowns_of(self, group: str, account_ids: Sequence[str]) -> dict[str, float]:
        found: dict[str, float] = {}
        for account_id in account_ids:
            until = self.cooldowns.get((group, account_id))
            if until is not None:
                found[account_id] = until
        return found
