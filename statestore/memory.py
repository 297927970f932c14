"""In-process state: a bounded, TTL-aware LRU map. The memory backend, and the hot cache
in front of Redis."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

from statestore.base import BindOutcome, Continuation, NoHooks, StoreHooks, TurnBinding

V = TypeVar("V")


class TTLCache(Generic[V]):
    """LRU with per-entry expiry on an injected clock."""

    def __init__(self, max_entries: int, clock: Callable[[], float]) -> None:
        self._data: OrderedDict[str, tuple[float, V]] = OrderedDict()
        self._max = max_entries
        self._clock = clock

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: str) -> V | None:
        found = self._data.get(key)
        if found is None:
            return None
        expires, value = found
        if expires <= self._clock():
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return value

    def set(self, key: str, value: V, ttl_s: float) -> None:
        self._data[key] = (self._clock() + ttl_s, value)
        self._data.move_to_end(key)
        while len(self._data) > self._max:
            self._data.popitem(last=False)

    def delete(self, key: str) -> None:
        self._data.pop(key, None)


def response_key(group: str, response_id: str) -> str:
    return f"{group}\x00{response_id}"


def session_key_of(group: str, session_key: str) -> str:
    return f"{group}\x00{session_key}"


class LocalState:
    """The four mappings plus the in-process response -> conn map."""

    def __init__(self, max_entries: int, ttl_s: int, clock: Callable[[], float]) -> None:
        self.ttl_s = ttl_s
        self.account = TTLCache[str](max_entries, clock)
        self.pending = TTLCache[dict[str, str]](max_entries, clock)
        self.last = TTLCache[str](max_entries, clock)
        self.turn_state = TTLCache[str](max_entries, clock)
        self.conn = TTLCache[str](max_entries, clock)

    def bind(self, b: TurnBinding) -> None:
        rk = response_key(b.group, b.response_id)
        self.account.set(rk, b.account_id, self.ttl_s)
        self.pending.set(rk, dict(b.pending_calls), self.ttl_s)
        if b.conn_id:
            self.conn.set(b.response_id, b.conn_id, self.ttl_s)
        if b.session_key:
            sk = session_key_of(b.group, b.session_key)
            self.last.set(sk, b.response_id, self.ttl_s)
            if b.turn_state:
                self.turn_state.set(sk, b.turn_state, self.ttl_s)

    def forget(self, group: str, response_id: str) -> None:
        rk = response_key(group, response_id)
        self.account.delete(rk)
        self.pending.delete(rk)
        self.conn.delete(response_id)


class MemoryStore:
    """``memory://``: one process's state, nothing shared (the embedded default)."""

    url_scheme = "memory"

    def __init__(
        self,
        *,
        response_ttl_s: int = 3600,
        max_entries: int = 65536,
        clock: Callable[[], float],
        hooks: StoreHooks | None = None,
    ) -> None:
        self.local = LocalState(max_entries, response_ttl_s, clock)
        self._hooks = hooks or NoHooks()

    async def bind_turn(self, binding: TurnBinding) -> BindOutcome:
        self.local.bind(binding)
        return BindOutcome(ok=True)

    async def lookup(
        self, group: str, *, response_id: str | None, session_key: str | None
    ) -> Continuation:
        local = self.local
        account = pending = conn = last = turn_state = None
        if response_id:
            rk = response_key(group, response_id)
            account = local.account.get(rk)
            pending = local.pending.get(rk)
            conn = local.conn.get(response_id)
        if session_key:
            sk = session_key_of(group, session_key)
            last = local.last.get(sk)
            turn_state = local.turn_state.get(sk)
        hit = account is not None or last is not None
        self._hooks.on_cache(hit)
        return Continuation(
            account_id=account,
            pending_calls=pending,
            session_last_response_id=last,
            turn_state=turn_state,
            conn_id=conn,
            source="cache" if hit else "miss",
        )

    async def get_response_account(self, group: str, response_id: str) -> str | None:
        return self.local.account.get(response_key(group, response_id))

    async def get_pending_calls(self, group: str, response_id: str) -> dict[str, str] | None:
        return self.local.pending.get(response_key(group, response_id))

    async def get_session_last_response(self, group: str, session_key: str) -> str | None:
        return self.local.last.get(session_key_of(group, session_key))

    async def get_turn_state(self, group: str, session_key: str) -> str | None:
        return self.local.turn_state.get(session_key_of(group, session_key))

    def get_conn_id(self, response_id: str) -> str | None:
        return self.local.conn.get(response_id)

    async def forget_response(self, group: str, response_id: str) -> None:
        self.local.forget(group, response_id)

    async def ping(self) -> bool:
        return True

    async def aclose(self) -> None:
        return None
