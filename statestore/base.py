"""The StateStore protocol, its records and hooks, and the URL dispatch (encode/broadcaster
style: one small interface, the backend picked from the URL scheme)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

import msgspec

DEFAULT_TTL_S = 3600  # the reference's fallback for a TTL <= 0
REDIS_SCHEMES = ("redis", "rediss", "unix")


class TurnBinding(msgspec.Struct, frozen=True, kw_only=True):
    """Everything one finished turn leaves behind, written in one round trip."""

    group: str
    account_id: str
    response_id: str
    session_key: str | None = None
    pending_calls: dict[str, str] = {}  # call_id -> call item type; {} = known: none pending
    turn_state: str | None = None
    conn_id: str | None = None  # in-process only: it means nothing on another instance


class Continuation(msgspec.Struct, frozen=True, kw_only=True):
    """What the next turn needs to know about the previous response and the session."""

    account_id: str | None = None
    pending_calls: dict[str, str] | None = None  # None: unknown
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
    """Continuation state (R-10). No method raises because the shared backend is down:
    reads answer from local data with ``degraded=True``, binds keep the local write."""

    @property
    def url_scheme(self) -> str: ...

    async def start(self) -> None: ...

    async def bind_turn(self, binding: TurnBinding) -> BindOutcome: ...

    async def lookup(
        self, group: str, *, response_id: str | None, session_key: str | None
    ) -> Continuation: ...

    async def get_response_account(self, group: str, response_id: str) -> str | None: ...

    async def get_pending_calls(self, group: str, response_id: str) -> dict[str, str] | None: ...

    async def get_session_last_response(self, group: str, session_key: str) -> str | None: ...

    async def get_turn_state(self, group: str, session_key: str) -> str | None: ...

    def get_conn_id(self, response_id: str) -> str | None: ...

    async def forget_response(self, group: str, response_id: str) -> None: ...

    async def ping(self) -> bool: ...

    async def aclose(self) -> None: ...


def url_scheme_of(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else ""


def open_store(
    url: str,
    *,
    op_timeout_ms: int = 150,
    response_ttl_s: int = 3600,
    cache_max_entries: int = 65536,
    key_prefix: str = "rwg",
    hooks: StoreHooks | None = None,
    clock: Callable[[], float] = time.monotonic,
    pool_max_connections: int = 64,
) -> StateStore:
    """Pick the backend from the URL scheme. Never connects: the Redis backend dials lazily."""
    scheme = url_scheme_of(url)
    if op_timeout_ms <= 0 or cache_max_entries <= 0 or pool_max_connections <= 0:
        raise ValueError(
            "op_timeout_ms, cache_max_entries and pool_max_connections must be positive"
        )
    ttl_s = response_ttl_s if response_ttl_s > 0 else DEFAULT_TTL_S
    if scheme == "memory":
        from statestore.memory import MemoryStore

        return MemoryStore(
            response_ttl_s=ttl_s, max_entries=cache_max_entries, clock=clock, hooks=hooks
        )
    if scheme in REDIS_SCHEMES:
        if "{" in key_prefix or "}" in key_prefix:
            raise ValueError(f"key_prefix {key_prefix!r} must not contain '{{' or '}}' (hash tags)")
        from statestore.redisstore import RedisStore

        return RedisStore(
            url,
            op_timeout_ms=op_timeout_ms,
            response_ttl_s=ttl_s,
            cache_max_entries=cache_max_entries,
            key_prefix=key_prefix,
            hooks=hooks,
            clock=clock,
            pool_max_connections=pool_max_connections,
        )
    raise ValueError(
        f"unsupported state store URL scheme {scheme!r} in {url!r} "
        "(use memory://, redis://, rediss:// or unix://)"
    )
