"""``memory://``: one process's state, nothing shared (the embedded default)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from statestore.base import BindOutcome, Continuation, NoHooks, StoreHooks, TurnBinding
from statestore.local import LocalState
from statestore.transcripts import TranscriptDelta
from statestore.ttlcache import TTLCache

_OK = BindOutcome(ok=True)


class MemoryStore:
    """Bounded, TTL-aware LRU maps on an injected clock. Every answer is local, so
    nothing is ever degraded."""

    url_scheme = "memory"

    def __init__(
        self,
        *,
        response_ttl_s: float = 3600,
        max_entries: int = 65536,
        clock: Callable[[], float],
        hooks: StoreHooks | None = None,
    ) -> None:
        self.local = LocalState(max_entries, response_ttl_s, clock)
        self._hooks: StoreHooks = hooks or NoHooks()
        self._ttl_s = response_ttl_s
        self._transcripts = TTLCache[tuple[str, str], list[TranscriptDelta]](max_entries, clock)

    async def start(self) -> None:
        return None

    async def bind_turn(self, binding: TurnBinding) -> BindOutcome:
        return self.bind_turn_nowait(binding)

    def bind_turn_nowait(self, binding: TurnBinding) -> BindOutcome:
        self.local.bind(binding)
        if binding.session_key and (binding.transcript or binding.drop_transcript):
            key = (binding.group, binding.session_key)
            delta = binding.transcript
            if delta is None:
                self._transcripts.delete(key)
            else:
                kept = self._transcripts.get(key) if delta.previous_response_id else None
                self._transcripts.set(key, [*(kept or ()), delta], self._ttl_s)
        return _OK

    async def load_transcript(self, group: str, session_key: str) -> list[TranscriptDelta] | None:
        return list(self._transcripts.get((group, session_key)) or ()) or None

    async def lookup(
        self, group: str, *, response_id: str | None, session_key: str | None
    ) -> Continuation:
        local = self.local
        account = pending = conn = last = turn_state = None
        stored = False
        if response_id:
            record = local.response(group, response_id)
            if record is not None:
                account = record.account_id
                pending = None if record.pending_calls is None else dict(record.pending_calls)
                stored = record.stored
            conn = local.conn.get(response_id)
            self._hooks.on_cache(record is not None)
        if session_key:
            last, turn_state = local.session(group, session_key)
        found = account is not None or last is not None or turn_state is not None
        return Continuation(
            account_id=account,
            pending_calls=pending,
            stored=stored,
            session_last_response_id=last,
            turn_state=turn_state,
            conn_id=conn,
            source="cache" if found else "miss",
        )

    async def get_response_account(self, group: str, response_id: str) -> str | None:
        record = self.local.response(group, response_id)
        return None if record is None else record.account_id

    async def get_pending_calls(self, group: str, response_id: str) -> dict[str, str] | None:
        record = self.local.response(group, response_id)
        if record is None or record.pending_calls is None:
            return None
        return dict(record.pending_calls)

    async def get_session_last_response(self, group: str, session_key: str) -> str | None:
        return self.local.last.get((group, session_key))

    async def get_turn_state(self, group: str, session_key: str) -> str | None:
        return self.local.turn_state.get((group, session_key))

    def get_conn_id(self, response_id: str) -> str | None:
        return self.local.conn.get(response_id)

    async def forget_response(self, group: str, response_id: str) -> None:
        self.local.forget(group, response_id)

    async def publish_cooldown(
        self, group: str, account_id: str, until_epoch_s: float, ttl_s: float
    ) -> bool:
        if ttl_s > 0:  # else already over: nothing to record
            self.local.cooldowns.set((group, account_id), until_epoch_s, ttl_s)
        return True

    async def read_cooldowns(self, group: str, account_ids: Sequence[str]) -> dict[str, float]:
        return self.local.cooldowns_of(group, account_ids)

    async def ping(self) -> bool:
        return True

    async def aclose(self) -> None:
        return None
