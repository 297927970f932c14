"""Binds that never reached Redis, kept so nothing the local cache held is lost.

A failed bind is replayed in the pipeline of the next successful bind (still one round
trip). Response keys are immutable (response ids are unique), so they are simply written
again with their remaining TTL. Session keys move as a conversation hops between
instances, so they are written back only if Redis still holds what this instance last
saw there (a compare-and-set script); if another instance moved the session on in the
meantime, its newer value wins.

Until then this instance prefers its own unsynced session values over Redis's, but only
while Redis still holds the value this instance saw before its write failed.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from statestore.base import TurnBinding

# KEYS: last, ts. ARGV: has_expected ("0"/"1"), expected last, new last, new ts ("" = keep),
# ttl ms. Sets last (and ts) only if last still holds the expected value (or is missing).
SESSION_CAS_SCRIPT = """
local cur = redis.call('GET', KEYS[1])
if (ARGV[1] == '0' and cur == false) or (ARGV[1] == '1' and cur == ARGV[2]) then
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[5])
  if ARGV[4] ~= '' then redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[5]) end
  return 1
end
return 0
"""


@dataclass(slots=True)
class Unsynced:
    binding: TurnBinding
    failed_at: float  # on the store's clock; the replay TTL is what is left of the original


@dataclass(slots=True)
class SessionOverride:
    """The newest unsynced bind of one session and what Redis held before it."""

    response_id: str
    turn_state: str | None
    redis_last_before: str | None  # what this instance last knew Redis to hold


class ResyncQueue:
    """Bounded: past ``max_entries`` the oldest failed binds are given up."""

    def __init__(self, max_entries: int = 4096) -> None:
        self._items: OrderedDict[tuple[str, str], Unsynced] = OrderedDict()
        self._sessions: dict[tuple[str, str], SessionOverride] = {}
        self._max = max_entries

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)

    def add(self, binding: TurnBinding, failed_at: float, redis_last_before: str | None) -> None:
        self._items[(binding.group, binding.response_id)] = Unsynced(binding, failed_at)
        self._items.move_to_end((binding.group, binding.response_id))
        if binding.session_key:
            sk = (binding.group, binding.session_key)
            older = self._sessions.get(sk)
            # Several failed binds in a row: Redis still holds what it held before the first.
            before = older.redis_last_before if older is not None else redis_last_before
            turn_state = binding.turn_state or (older.turn_state if older else None)
            self._sessions[sk] = SessionOverride(binding.response_id, turn_state, before)
        while len(self._items) > self._max:
            _, dropped = self._items.popitem(last=False)
            self._drop_session_if_current(dropped.binding)

    def session_override(self, group: str, session_key: str) -> SessionOverride | None:
        return self._sessions.get((group, session_key)) if self._sessions else None

    def drop_session(self, group: str, session_key: str) -> None:
        self._sessions.pop((group, session_key), None)

    def owns_session(self, item: Unsynced) -> SessionOverride | None:
        """The override this item should write back, if it is still the newest one."""
        b = item.binding
        if not b.session_key:
            return None
        override = self._sessions.get((b.group, b.session_key))
        if override is None or override.response_id != b.response_id:
            return None
        return override

    def batch(self, limit: int) -> list[Unsynced]:
        out: list[Unsynced] = []
        for item in self._items.values():
            if len(out) >= limit:
                break
            out.append(item)
        return out

    def done(self, items: list[Unsynced]) -> None:
        """These reached Redis: forget them and the session overrides they carried."""
        for item in items:
            b = item.binding
            if self._items.get((b.group, b.response_id)) is item:
                del self._items[(b.group, b.response_id)]
            self._drop_session_if_current(b)

    def forget(self, group: str, response_id: str) -> None:
        item = self._items.pop((group, response_id), None)
        if item is not None:
            self._drop_session_if_current(item.binding)

    def _drop_session_if_current(self, b: TurnBinding) -> None:
        if not b.session_key:
            return
        sk = (b.group, b.session_key)
        override = self._sessions.get(sk)
        if override is not None and override.response_id == b.response_id:
            del self._sessions[sk]
