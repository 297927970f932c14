"""``redis://`` backend: a hot local cache in front of Redis, short independent deadlines.

Response-keyed records never change once written, so cache hits skip Redis. Session
records (last response, turn state) move as a conversation hops between instances, so
they are always read from Redis and served from the cache only when Redis fails.
Every operation has its own deadline (R-12); on timeout or error the caller gets the
local data with ``degraded=True`` and nothing raises.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from statestore.base import BindOutcome, Continuation, NoHooks, StoreHooks, TurnBinding
from statestore.memory import LocalState, response_key, session_key_of

log = logging.getLogger("statestore")
T = TypeVar("T")
_pending_decoder = msgspec.json.Decoder(dict[str, str])
_encoder = msgspec.json.Encoder()


class RedisKeys:
    """Key layout: a shared prefix and {hash-tags} so one response's (or one session's)
    keys live in one Redis Cluster slot."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def account(self, group: str, response_id: str) -> str:
        return f"{self.prefix}:{{r:{group}:{response_id}}}:acct"

    def pending(self, group: str, response_id: str) -> str:
        return f"{self.prefix}:{{r:{group}:{response_id}}}:pend"

    def last(self, group: str, session: str) -> str:
        return f"{self.prefix}:{{s:{group}:{session}}}:last"

    def turn_state(self, group: str, session: str) -> str:
        return f"{self.prefix}:{{s:{group}:{session}}}:ts"


class RedisStore:
    url_scheme = "redis"

    def __init__(
        self,
        url: str,
        *,
        op_timeout_ms: int = 150,
        response_ttl_s: int = 3600,
        cache_max_entries: int = 65536,
        key_prefix: str = "rwg",
        hooks: StoreHooks | None = None,
        clock: Callable[[], float] = time.monotonic,
        pool_max_connections: int = 64,
    ) -> None:
        self.op_timeout = op_timeout_ms / 1000.0
        self.ttl_s = response_ttl_s
        self.keys = RedisKeys(key_prefix)
        self.local = LocalState(cache_max_entries, response_ttl_s, clock)
        self._hooks = hooks or NoHooks()
        # No client-side retries: a retry would blow the per-op deadline. A command cut
        # off by the deadline disconnects its connection (no half-read reply is reused).
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=pool_max_connections,
            timeout=self.op_timeout,
            socket_timeout=self.op_timeout,
            socket_connect_timeout=self.op_timeout,
            retry_on_timeout=False,
            retry=Retry(NoBackoff(), 0),
        )
        self._redis = aioredis.Redis(connection_pool=pool, retry=Retry(NoBackoff(), 0))

    async def _op(self, name: str, call: Callable[[], Awaitable[T]]) -> tuple[T | None, str | None]:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.op_timeout):
                result = await call()
        except Exception as exc:  # timeout, connection refused, protocol error...
            self._hooks.on_op(name, time.perf_counter() - started, False)
            return None, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        self._hooks.on_op(name, time.perf_counter() - started, True)
        return result, None

    # -- writes ------------------------------------------------------------------------
    async def bind_turn(self, binding: TurnBinding) -> BindOutcome:
        self.local.bind(binding)
        k, b, ttl = self.keys, binding, self.ttl_s

        async def write() -> list[object]:
            pipe = self._redis.pipeline(transaction=False)
            pipe.set(k.account(b.group, b.response_id), b.account_id, ex=ttl)
            pipe.set(k.pending(b.group, b.response_id), _encoder.encode(b.pending_calls), ex=ttl)
            if b.session_key:
                pipe.set(k.last(b.group, b.session_key), b.response_id, ex=ttl)
                if b.turn_state:
                    pipe.set(k.turn_state(b.group, b.session_key), b.turn_state, ex=ttl)
            return await pipe.execute()

        _, error = await self._op("bind", write)
        if error is None:
            return BindOutcome(ok=True)
        log.warning(
            "statestore bind failed; continuing with local state",
            extra={
                "event": "bind_failed",
                "group": b.group,
                "account_id": b.account_id,
                "response_id": b.response_id,
                "error": error,
            },
        )
        self._hooks.on_bind_failure(b.group, b.account_id, b.response_id, error)
        return BindOutcome(ok=False, degraded=True, error=error)

    async def forget_response(self, group: str, response_id: str) -> None:
        self.local.forget(group, response_id)
        k = self.keys
        await self._op(
            "forget",
            lambda: self._redis.delete(
                k.account(group, response_id), k.pending(group, response_id)
            ),
        )

    # -- reads -------------------------------------------------------------------------
    async def lookup(
        self, group: str, *, response_id: str | None, session_key: str | None
    ) -> Continuation:
        local, k = self.local, self.keys
        account = pending = last = turn_state = None
        conn = None
        fetch: list[str] = []
        if response_id:
            rk = response_key(group, response_id)
            account = local.account.get(rk)
            pending = local.pending.get(rk)
            conn = local.conn.get(response_id)
            hit = account is not None and pending is not None
            self._hooks.on_cache(hit)
            if not hit:
                fetch += [k.account(group, response_id), k.pending(group, response_id)]
        if session_key:
            fetch += [k.last(group, session_key), k.turn_state(group, session_key)]
        if not fetch:
            return Continuation(
                account_id=account, pending_calls=pending, conn_id=conn, source="cache"
            )
        values, error = await self._op("lookup", lambda: self._redis.mget(fetch))
        if error is not None or values is None:
            if session_key:
                sk = session_key_of(group, session_key)
                last, turn_state = local.last.get(sk), local.turn_state.get(sk)
            return Continuation(
                account_id=account,
                pending_calls=pending,
                session_last_response_id=last,
                turn_state=turn_state,
                conn_id=conn,
                degraded=True,
                source="cache",
            )
        got = [v.decode() if isinstance(v, bytes) else v for v in values]
        index = 0
        if response_id and len(fetch) - (2 if session_key else 0) == 2:
            raw_account, raw_pending = got[0], got[1]
            index = 2
            rk = response_key(group, response_id)
            if raw_account is not None:
                account = raw_account
                local.account.set(rk, raw_account, self.ttl_s)
            if raw_pending is not None:
                pending = _pending_decoder.decode(raw_pending)
                local.pending.set(rk, pending, self.ttl_s)
        if session_key:
            last, turn_state = got[index], got[index + 1]
            sk = session_key_of(group, session_key)
            if last is not None:
                local.last.set(sk, last, self.ttl_s)
            if turn_state is not None:
                local.turn_state.set(sk, turn_state, self.ttl_s)
        return Continuation(
            account_id=account,
            pending_calls=pending,
            session_last_response_id=last,
            turn_state=turn_state,
            conn_id=conn,
            source="redis",
        )

    async def get_response_account(self, group: str, response_id: str) -> str | None:
        return (await self.lookup(group, response_id=response_id, session_key=None)).account_id

    async def get_pending_calls(self, group: str, response_id: str) -> dict[str, str] | None:
        return (await self.lookup(group, response_id=response_id, session_key=None)).pending_calls

    async def get_session_last_response(self, group: str, session_key: str) -> str | None:
        return (
            await self.lookup(group, response_id=None, session_key=session_key)
        ).session_last_response_id

    async def get_turn_state(self, group: str, session_key: str) -> str | None:
        return (await self.lookup(group, response_id=None, session_key=session_key)).turn_state

    def get_conn_id(self, response_id: str) -> str | None:
        return self.local.conn.get(response_id)

    async def ping(self) -> bool:
        result, error = await self._op("ping", self._redis.ping)
        return error is None and bool(result)

    async def aclose(self) -> None:
        await self._redis.aclose()
