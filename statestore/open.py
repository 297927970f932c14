"""Pick the StateStore backend from the URL scheme."""

from __future__ import annotations

import time
from collections.abc import Callable

from statestore.base import StateStore, StoreHooks
from statestore.memory import MemoryStore
from statestore.redisstore import RedisStore
from statestore.schemes import MEMORY_SCHEMES, REDIS_SCHEMES, STORE_URL_SCHEMES_TEXT, url_scheme_of
from statestore.topology import parse_topology

DEFAULT_TTL_S = 3600  # used when the configured TTL is <= 0


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
    """Never connects: the Redis backends dial lazily. A bad URL is a ValueError."""
    scheme = url_scheme_of(url)
    if op_timeout_ms <= 0 or cache_max_entries <= 0 or pool_max_connections <= 0:
        raise ValueError(
            "op_timeout_ms, cache_max_entries and pool_max_connections must be positive"
        )
    ttl_s = response_ttl_s if response_ttl_s > 0 else DEFAULT_TTL_S
    if scheme in MEMORY_SCHEMES:
        return MemoryStore(
            response_ttl_s=ttl_s, max_entries=cache_max_entries, clock=clock, hooks=hooks
        )
    if scheme in REDIS_SCHEMES:
        if "{" in key_prefix or "}" in key_prefix:
            raise ValueError(f"key_prefix {key_prefix!r} must not contain '{{' or '}}' (hash tags)")
        if "+" in scheme:
            parse_topology(url)  # a malformed node list fails here, not at the first turn
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
        f"unsupported state store URL scheme {scheme!r} in {url!r} (use {STORE_URL_SCHEMES_TEXT})"
    )
