"""One acquired socket, handed out by ``AccountPool.acquire``."""

from __future__ import annotations

from collections.abc import Callable

from pool.heap import Entry
from pool.types import Conn

# Takes the socket back: (entry, broken, bound).
ReturnToPool = Callable[[Entry, bool, bool], None]


class Lease:
    """One acquired socket. ``release`` is synchronous, idempotent and O(log n)."""

    __slots__ = (
        "_entry",
        "_return",
        "account_id",
        "conn",
        "conn_id",
        "preferred_hit",
        "reused",
        "waited_s",
    )

    def __init__(
        self,
        give_back: ReturnToPool,
        account_id: str,
        entry: Entry,
        reused: bool,
        preferred_hit: bool,
        waited_s: float,
    ) -> None:
        self._return: ReturnToPool | None = give_back
        self._entry = entry
        self.conn: Conn = entry.conn
        self.conn_id = entry.conn_id
        self.account_id = account_id
        self.reused = reused  # False: dialed for this acquire
        self.preferred_hit = preferred_hit
        self.waited_s = waited_s  # time queued for a socket; 0.0 when none was needed

    def release(self, *, broken: bool = False, bound: bool = False) -> None:
        """Give the socket back. ``broken`` retires it (closed in the background);
        ``bound`` says it holds a live store:false conversation's previous response."""
        give_back = self._return
        if give_back is None:
            return
        self._return = None
        give_back(self._entry, broken, bound)

    @property
    def released(self) -> bool:
        return self._return is None
