"""Redis (one server, a Cluster, or a Sentinel-managed primary) behind a hot local cache.

Response records never change once written (response ids are unique), so a cache hit
skips Redis. Session records (last response, turn state) move as a conversation hops
between instances, so whenever a session is asked about they are read from Redis (in the
same single round trip) and the cached copy is only the fallback.

Every Redis operation has its own short deadline, never the caller's: on timeout
or error the caller gets the local data with ``degraded=True`` and nothing raises. A
refused or reset connection (a restarted server, a primary replaced by a failover) is
retried once inside that deadline.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
from redis.asyncio.connection import BlockingConnectionPool
from redis.exceptions import ClusterDownError, SlotNotCoveredError
from redis.exceptions import ConnectionError as RedisConnectionError

from statestore.base import BindOutcome, Continuation, NoHooks, StoreHooks, TurnBinding
from statestore.clients import connect
from statestore.keys import RedisKeys
from statestore.local import LocalState, ResponseRecord
from statestore.resync import SESSION_CAS_SCRIPT, ResyncQueue, Unsynced
from statestore.schemes import url_scheme_of
from statestore.transcripts import TranscriptDelta, decode_delta, encode_delta

log = logging.getLogger("statestore")
T = TypeVar("T")

_OK = BindOutcome(ok=True)
_encode = msgspec.json.Encoder().encode
_pending_decoder = msgspec.json.Decoder(dict[str, str])
REPLAY_PER_BIND = 32  # failed binds written back per successful bind pipeline
# Errors worth one more attempt within the deadline (every op is idempotent): refused or
# reset connections and cluster slots in flux. A timeout is not: the deadline is spent.
RETRY_AFTER = (RedisConnectionError, ClusterDownError, SlotNotCoveredError)


@dataclass(slots=True)
class _Fetched:
    """One lookup pipeline's replies (bytes from Redis, None where absent)."""

    pttl: int = -2
    account: bytes | None = None
    pending: bytes | None = None
    stored: bytes | None = None
    last: bytes | None = None
    turn_state: bytes | None = None


def _text(raw: bytes | None) -> str | None:
    return None if raw is None else raw.decode("utf-8", "replace")


def _pending(raw: bytes | None) -> dict[str, str] | None:
    """A missing or unreadable record means "unknown", never an exception."""
    if raw is None:
        return None
    try:
        return _pending_decoder.decode(raw)
    except msgspec.DecodeError:
        return None


def _source(used_local: bool, used_redis: bool) -> str:
    if used_local and used_redis:
        return "mixed"
    return "redis" if used_redis else "cache" if used_local else "miss"


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class RedisStore:
    def __init__(
        self,
        url: str,
        *,
        op_timeout_ms: int = 150,
        response_ttl_s: float = 3600,
        cache_max_entries: int = 65536,
        key_prefix: str = "rwg",
        hooks: StoreHooks | None = None,
        clock: Callable[[], float] = time.monotonic,
        pool_max_connections: int = 64,
    ) -> None:
        self.url_scheme = url_scheme_of(url)
        self.op_timeout_s = op_timeout_ms / 1000.0
        self.ttl_s = response_ttl_s
        self._ttl_ms = max(1, int(response_ttl_s * 1000))
        self.keys = RedisKeys(key_prefix)
        self.local = LocalState(cache_max_entries, response_ttl_s, clock)
        self.unsynced = ResyncQueue(min(cache_max_entries, 4096))
        self._clock = clock
        self._hooks: StoreHooks = hooks or NoHooks()
        # Nothing dials here: connections are made by the first operation.
        self.handle = connect(
            url, op_timeout_s=self.op_timeout_s, max_connections=pool_max_connections
        )
        self.client: Any = self.handle.client
        # A command cut off by the deadline disconnects its connection inside redis-py
        # (read/send paths disconnect on any BaseException), so a half-read reply is
        # never handed to the next command; tests/statestore pin this with SIGSTOP.

    @property
    def pool(self) -> BlockingConnectionPool:
        """The connection pool of a single server or Sentinel primary (a cluster has one
        per node)."""
        if self.handle.pool is None:
            raise AttributeError(f"a {self.url_scheme}:// store has no single pool")
        return self.handle.pool

    async def _run(self, op: str, call: Callable[[], Awaitable[T]]) -> tuple[T | None, str | None]:
        """One Redis op under its own deadline: (result, None) or (None, error)."""
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.op_timeout_s):
                try:
                    result = await call()
                except RETRY_AFTER as exc:
                    # A dead pooled connection, or a primary replaced by a failover: redial
                    # (and relearn a cluster's slots) once, inside the same deadline.
                    await self.handle.before_retry()
                    log.debug("statestore %s retried after %s", op, _describe(exc))
                    result = await call()
        except Exception as exc:  # timeout, refused, reset, protocol error, ...
            self._hooks.on_op(op, time.perf_counter() - started, False)
            self.handle.after_failure()  # a cluster relearns its slot map off this clock
            return None, _describe(exc)
        self._hooks.on_op(op, time.perf_counter() - started, True)
        return result, None

    async def start(self) -> None:
        """Optional warm-up: dial one connection now. Never raises."""
        await self.ping()

    # -- writes ------------------------------------------------------------------------
    def bind_turn_nowait(self, binding: TurnBinding) -> None:
        return None  # a Redis write: always awaited (off the turn's path, by the caller)

    async def bind_turn(self, binding: TurnBinding) -> BindOutcome:
        b = binding
        redis_last_before = self.local.last.get((b.group, b.session_key)) if b.session_key else None
        self.local.bind(b)
        replays = self.unsynced.batch(REPLAY_PER_BIND) if self.unsynced else []

        async def write() -> None:
            pipe = self.client.pipeline(transaction=False)
            first_own = sum(self._queue_replay(pipe, item) for item in replays)
            self._queue_bind(pipe, b, self._ttl_ms)
            replies = await pipe.execute(raise_on_error=False)
            # Only this bind's own replies decide the outcome: a write-back Redis refuses
            # is given up, never allowed to fail every later bind.
            for reply in replies[first_own:]:
                if isinstance(reply, Exception):
                    raise reply

        _, error = await self._run("bind", write)
        if error is None:
            if replays:
                self.unsynced.done(replays)
            if b.session_key and self.unsynced:
                self.unsynced.drop_session(b.group, b.session_key)  # Redis has the newest now
            return _OK
        self.unsynced.add(b, self._clock(), redis_last_before)
        log.warning(
            "statestore bind failed group=%s account_id=%s response_id=%s: %s",
            b.group,
            b.account_id,
            b.response_id,
            error,
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

    def _queue_bind(self, pipe: Any, b: TurnBinding, ttl_ms: int) -> None:
        acct_key, pend_key = self.keys.response(b.group, b.response_id)
        pipe.set(acct_key, b.account_id, px=ttl_ms)
        pipe.set(pend_key, _encode(b.pending_calls), px=ttl_ms)
        if b.stored:
            pipe.set(self.keys.stored(b.group, b.response_id), "1", px=ttl_ms)
        if b.session_key:
            last_key, ts_key = self.keys.session(b.group, b.session_key)
            pipe.set(last_key, b.response_id, px=ttl_ms)
            if b.turn_state:
                pipe.set(ts_key, b.turn_state, px=ttl_ms)
            if b.transcript is not None or b.drop_transcript:
                tx_key = self.keys.transcript(b.group, b.session_key)
                delta = b.transcript
                if delta is None or delta.previous_response_id is None:
                    pipe.delete(tx_key)
                if delta is not None:
                    pipe.rpush(tx_key, encode_delta(delta))
                    pipe.pexpire(tx_key, ttl_ms)

    def _queue_replay(self, pipe: Any, item: Unsynced) -> int:
        """Queue one failed bind's write-back; returns how many commands it queued."""
        b = item.binding
        left_ms = int((self.ttl_s - (self._clock() - item.failed_at)) * 1000)
        if left_ms <= 0:
            return 0  # expired locally as well: nothing left to keep
        acct_key, pend_key = self.keys.response(b.group, b.response_id)
        pipe.set(acct_key, b.account_id, px=left_ms)
        pipe.set(pend_key, _encode(b.pending_calls), px=left_ms)
        queued = 2
        if b.stored:
            pipe.set(self.keys.stored(b.group, b.response_id), "1", px=left_ms)
            queued = 3
        override = self.unsynced.owns_session(item)
        if override is not None and b.session_key:
            before = override.redis_last_before
            pipe.eval(
                SESSION_CAS_SCRIPT,
                2,
                *self.keys.session(b.group, b.session_key),
                "0" if before is None else "1",
                before or "",
                override.response_id,
                override.turn_state or "",
                left_ms,
            )
            return queued + 1
        return queued

    async def forget_response(self, group: str, response_id: str) -> None:
        self.local.forget(group, response_id)
        self.unsynced.forget(group, response_id)
        keys = (*self.keys.response(group, response_id), self.keys.stored(group, response_id))
        await self._run("forget", lambda: self.client.delete(*keys))

    async def publish_cooldown(
        self, group: str, account_id: str, until_epoch_s: float, ttl_s: float
    ) -> bool:
        if ttl_s <= 0:
            return True  # already over: nothing to tell anyone
        self.local.cooldowns.set((group, account_id), until_epoch_s, ttl_s)
        key = self.keys.account_until(group, account_id)
        ttl_ms = max(1, int(ttl_s * 1000))
        _, error = await self._run(
            "cooldown_publish", lambda: self.client.set(key, repr(until_epoch_s), px=ttl_ms)
        )
        return error is None

    # -- reads -------------------------------------------------------------------------
    async def read_cooldowns(self, group: str, account_ids: Sequence[str]) -> dict[str, float]:
        ids = list(account_ids)
        if not ids:
            return {}
        keys = [self.keys.account_until(group, a) for a in ids]  # one slot: one hash tag
        replies, error = await self._run(
            "cooldown_read", lambda: self.client.execute_command("MGET", *keys)
        )
        if error is not None or replies is None:
            return self.local.cooldowns_of(group, ids)
        found: dict[str, float] = {}
        for account_id, raw in zip(ids, replies, strict=False):
            if raw is None:
                continue
            try:
                until = float(raw)
            except ValueError:
                continue  # not ours to understand: as if absent
            if math.isfinite(until):
                found[account_id] = until
        return found

    async def lookup(
        self, group: str, *, response_id: str | None, session_key: str | None
    ) -> Continuation:
        """What a turn needs about its previous response and session, in one round trip.

        Long because the cache check, the one pipeline, the degraded answer, the backfill
        and the unsynced-session override must read as one sequence to be checked.
        """
        local = self.local
        record: ResponseRecord | None = None
        conn: str | None = None
        fetch_response = False
        if response_id:
            record = local.response(group, response_id)
            conn = local.conn.get(response_id)
            self._hooks.on_cache(record is not None)
            fetch_response = record is None
        if not fetch_response and not session_key:
            return self._answer(record, None, None, conn, used_local=record is not None)

        response_keys = (
            (*self.keys.response(group, response_id), self.keys.stored(group, response_id))
            if response_id and fetch_response
            else None
        )
        session_keys = self.keys.session(group, session_key) if session_key else None

        async def read() -> _Fetched:
            pipe = self.client.pipeline(transaction=False)
            if response_keys is not None:
                pipe.pttl(response_keys[0])
                pipe.execute_command("MGET", *response_keys)  # one slot: one hash tag
            if session_keys is not None:
                pipe.execute_command("MGET", *session_keys)
            # Unpacked here so a malformed reply is an op error (degraded), never a raise.
            replies = iter(await pipe.execute())
            fetched = _Fetched()
            if response_keys is not None:
                fetched.pttl = int(next(replies))
                fetched.account, fetched.pending, fetched.stored = next(replies)
            if session_keys is not None:
                fetched.last, fetched.turn_state = next(replies)
            return fetched

        got, error = await self._run("lookup", read)
        if error is not None or got is None:
            last = turn_state = None
            if session_key:
                last, turn_state = local.session(group, session_key)
            found = record is not None or last is not None or turn_state is not None
            return self._answer(record, last, turn_state, conn, used_local=found, degraded=True)

        used_local, used_redis = record is not None, False
        if response_id and got.account is not None:
            record = ResponseRecord(
                got.account.decode("utf-8", "replace"),
                _pending(got.pending),
                got.stored is not None,
            )
            # Backfill with what is left of the Redis TTL, not a fresh one.
            ttl = self.ttl_s if got.pttl < 0 else min(got.pttl / 1000, self.ttl_s)
            local.responses.set((group, response_id), record, ttl)
            used_redis = True
        last = turn_state = None
        if session_key:
            last, turn_state = _text(got.last), _text(got.turn_state)
            override = self.unsynced.session_override(group, session_key)
            if override is not None:
                if last == override.redis_last_before:
                    # Our write never arrived and nobody else moved the session on.
                    return self._answer(
                        record,
                        override.response_id,
                        override.turn_state or turn_state,
                        conn,
                        used_local=True,
                        used_redis=used_redis or last is not None,
                    )
                self.unsynced.drop_session(group, session_key)  # another instance won
            sk = (group, session_key)
            if last is not None:
                local.last.set(sk, last, self.ttl_s)
            if turn_state is not None:
                local.turn_state.set(sk, turn_state, self.ttl_s)
            used_redis = used_redis or last is not None or turn_state is not None
        return self._answer(
            record, last, turn_state, conn, used_local=used_local, used_redis=used_redis
        )

    @staticmethod
    def _answer(
        record: ResponseRecord | None,
        last: str | None,
        turn_state: str | None,
        conn: str | None,
        *,
        used_local: bool,
        used_redis: bool = False,
        degraded: bool = False,
    ) -> Continuation:
        pending = None
        if record is not None and record.pending_calls is not None:
            pending = dict(record.pending_calls)  # the caller may mutate its copy
        return Continuation(
            account_id=None if record is None else record.account_id,
            pending_calls=pending,
            stored=record is not None and record.stored,
            session_last_response_id=last,
            turn_state=turn_state,
            conn_id=conn,
            degraded=degraded,
            source=_source(used_local, used_redis),
        )

    async def get_response_account(self, group: str, response_id: str) -> str | None:
        return (await self.lookup(group, response_id=response_id, session_key=None)).account_id

    async def get_pending_calls(self, group: str, response_id: str) -> dict[str, str] | None:
        return (await self.lookup(group, response_id=response_id, session_key=None)).pending_calls

    async def get_session_last_response(self, group: str, session_key: str) -> str | None:
        found = await self.lookup(group, response_id=None, session_key=session_key)
        return found.session_last_response_id

    async def get_turn_state(self, group: str, session_key: str) -> str | None:
        return (await self.lookup(group, response_id=None, session_key=session_key)).turn_state

    def get_conn_id(self, response_id: str) -> str | None:
        return self.local.conn.get(response_id)

    async def load_transcript(self, group: str, session_key: str) -> list[TranscriptDelta] | None:
        """The session's deltas, oldest first (one round trip); None when there are none
        or Redis did not answer in time."""
        key = self.keys.transcript(group, session_key)
        raw, error = await self._run("load_transcript", lambda: self.client.lrange(key, 0, -1))
        if error is not None or not raw:
            return None
        deltas = [decode_delta(bytes(entry)) for entry in raw]
        return [d for d in deltas if d is not None] or None

    async def ping(self) -> bool:
        result, error = await self._run("ping", self.handle.ping)
        return error is None and bool(result)

    async def aclose(self) -> None:
        # Closing only tears down local sockets, but keep even that off the caller's clock.
        try:
            async with asyncio.timeout(max(self.op_timeout_s, 1.0)):
                await self.handle.aclose()
        except Exception:  # a close that fails has nothing left to save
            if self.handle.pool is not None:
                await self.handle.pool.disconnect(inuse_connections=True)
