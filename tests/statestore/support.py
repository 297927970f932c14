"""Shared helpers for the statestore tests: an injected clock, recording hooks, a
connection class that counts round trips."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from redis.asyncio.connection import Connection

from statestore import StateStore, TurnBinding
from statestore.redisstore import RedisStore
from tests.support import FakeClock as FakeClock

PENDING = {"call_1": "function_call", "call_2": "custom_tool_call"}


class RecordingHooks:
    def __init__(self) -> None:
        self.ops: list[tuple[str, bool]] = []
        self.cache: list[bool] = []
        self.bind_failures: list[tuple[str, str, str, str]] = []

    def on_op(self, op: str, seconds: float, ok: bool) -> None:
        assert seconds >= 0
        self.ops.append((op, ok))

    def on_cache(self, hit: bool) -> None:
        self.cache.append(hit)

    def on_bind_failure(self, group: str, account_id: str, response_id: str, error: str) -> None:
        self.bind_failures.append((group, account_id, response_id, error))


def binding(rid: str = "resp_1", **overrides: Any) -> TurnBinding:
    fields: dict[str, Any] = {
        "group": "g",
        "account_id": "acct-a",
        "response_id": rid,
        "session_key": "sess-1",
        "pending_calls": dict(PENDING),
        "turn_state": "ts-1",
        "conn_id": "gw:acct-a:1",
    }
    fields.update(overrides)
    return TurnBinding(**fields)


def as_redis(store: StateStore) -> RedisStore:
    assert isinstance(store, RedisStore)
    return store


async def count_round_trips(store: StateStore) -> list[int]:
    """On a fresh store (no connection yet): make its connections log each socket write
    (a pipeline is one write, hence one round trip), warm one connection, and return
    the emptied log that later operations append to."""
    writes: list[int] = []
    redis_store = as_redis(store)
    base: type[Connection] = redis_store.pool.connection_class  # a Sentinel's one too

    class CountingConnection(base):  # type: ignore[valid-type,misc]
        async def send_packed_command(
            self, command: bytes | str | Iterable[bytes], check_health: bool = True
        ) -> None:
            writes.append(id(self))
            await super().send_packed_command(command, check_health)

    redis_store.pool.connection_class = CountingConnection
    assert await store.ping()
    assert writes, "the store had dialled before the counting class was installed"
    writes.clear()
    return writes


class ClusterTraffic:
    """Records every request the cluster client sends to a node (one pipelined write
    and its replies, i.e. one round trip) and every error reply, by wrapping
    ``ClusterNode.execute_pipeline`` and ``ClusterNode.execute_command``."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, list[int]]] = []  # (node, slot of each command)
        self.single_commands: list[tuple[str, str]] = []  # redirect re-sends, discovery
        self.errors: list[str] = []

    def install(self, monkeypatch: Any) -> ClusterTraffic:
        from redis.asyncio.cluster import ClusterNode
        from redis.crc import key_slot

        pipeline, command = ClusterNode.execute_pipeline, ClusterNode.execute_command
        traffic = self

        def slot_of(args: tuple[Any, ...]) -> int:
            name = str(args[0]).upper()
            key = args[3] if name == "EVAL" else args[1]
            return key_slot(key if isinstance(key, bytes) else str(key).encode())

        async def counted_pipeline(node: ClusterNode, commands: list[Any]) -> bool:
            traffic.requests.append((node.name, [slot_of(c.args) for c in commands]))
            failed = await pipeline(node, commands)
            traffic.errors += [repr(c.result) for c in commands if isinstance(c.result, Exception)]
            return failed

        async def counted_command(node: ClusterNode, *args: Any, **kwargs: Any) -> Any:
            traffic.single_commands.append((node.name, str(args[0])))
            return await command(node, *args, **kwargs)

        monkeypatch.setattr(ClusterNode, "execute_pipeline", counted_pipeline)
        monkeypatch.setattr(ClusterNode, "execute_command", counted_command)
        return self

    def clear(self) -> None:
        self.requests.clear()
        self.single_commands.clear()
        self.errors.clear()
