"""The redis-py client for each URL scheme, configured so no call outlives its deadline.

Every client gets socket read/connect timeouts equal to the op deadline and no client
retries (a retry would overrun the deadline). ``redis://`` is one server;
``redis+cluster://`` follows slot moves and failovers; ``redis+sentinel://`` asks the
sentinels for the current primary whenever it opens a connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import math
import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import AbstractConnection, BlockingConnectionPool
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff

from statestore.schemes import CLUSTER_SCHEMES, SENTINEL_SCHEMES, url_scheme_of
from statestore.topology import Topology, parse_topology


def _no_client_info() -> dict[str, Any]:
    # No CLIENT SETINFO on connect: a reconnect is then just the TCP handshake.
    if "driver_info" in inspect.signature(AbstractConnection.__init__).parameters:
        return {"driver_info": None}
    return {"lib_name": None, "lib_version": None}  # pragma: no cover - redis-py < 7


def _deadline_kwargs(op_timeout_s: float) -> dict[str, Any]:
    return {
        "socket_timeout": op_timeout_s,
        "socket_connect_timeout": op_timeout_s,
        "retry": Retry(NoBackoff(), 0),
        "health_check_interval": 0,
        **_no_client_info(),
    }


def make_pool(url: str, *, op_timeout_s: float, max_connections: int) -> BlockingConnectionPool:
    """A single-node pool that can't outlive the deadline; waiting for a free connection
    is bounded too (the default pool raises past its size instead)."""
    return BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=op_timeout_s, **_deadline_kwargs(op_timeout_s)
    )


class BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """Sentinel discovery of the primary, with the blocking pool's bounded wait."""


@dataclass
class RedisHandle:
    """The client the store talks to, plus what to do after an operation failed."""

    client: Any  # redis.asyncio.Redis or RedisCluster: the same commands and pipelines
    pool: BlockingConnectionPool | None = None  # None on a cluster (a pool per node)
    sentinel: Sentinel | None = None
    refresher: TopologyRefresher | None = None

    async def ping(self) -> bool:
        """Every server holding data answers: on a cluster, each primary."""
        if isinstance(self.client, RedisCluster):
            return bool(await self.client.ping(target_nodes=RedisCluster.PRIMARIES))
        return bool(await self.client.ping())

    def after_failure(self) -> None:
        """An operation failed: a cluster relearns its slot map in the background."""
        if self.refresher is not None:
            self.refresher.trigger()

    async def before_retry(self) -> None:
        """After a connection error, before the one retry: a cluster relearns its slot map
        first (shared and rate-limited). Single-node and Sentinel clients just redial; a
        Sentinel client asks the sentinels for the current primary when it dials."""
        if self.refresher is not None:
            await self.refresher.refreshed()

    async def aclose(self) -> None:
        if self.refresher is not None:
            await self.refresher.aclose()
        await self.client.aclose()
        if self.sentinel is not None:
            await self.sentinel.aclose()


class TopologyRefresher:
    """Relearns a cluster's slot map after a failed operation.

    redis-py refreshes it only for errors that escape a pipeline, and our pipelines
    report per-command errors; without this, a killed primary would keep its slots in
    the client's map after a replica took them over. One refresh at a time, at most one
    per ``min_interval_s``; it runs as its own task, so an operation whose deadline ends
    while waiting for it does not cancel it.
    """

    def __init__(self, client: RedisCluster, min_interval_s: float) -> None:
        self._client = client
        self._min_interval_s = min_interval_s
        self._task: asyncio.Task[None] | None = None
        self._last_start = -math.inf

    def trigger(self) -> asyncio.Task[None] | None:
        """Start a refresh unless one runs or one started too recently."""
        if self._task is not None and not self._task.done():
            return self._task
        now = time.monotonic()
        if now - self._last_start < self._min_interval_s:
            return None
        self._last_start = now
        self._task = asyncio.get_running_loop().create_task(self._refresh())
        return self._task

    async def refreshed(self) -> None:
        task = self.trigger()
        if task is not None:
            await asyncio.shield(task)

    async def _refresh(self) -> None:
        with contextlib.suppress(Exception):  # the next failure tries again
            await self._client.nodes_manager.initialize()

    async def aclose(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def _cluster(topology: Topology, op_timeout_s: float, max_connections: int) -> RedisHandle:
    client = RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in topology.nodes],
        username=topology.username,
        password=topology.password,
        ssl=topology.tls,
        max_connections=max_connections,  # per node
        **_deadline_kwargs(op_timeout_s),
    )
    return RedisHandle(client, refresher=TopologyRefresher(client, max(op_timeout_s, 0.1)))


def _sentinel(topology: Topology, op_timeout_s: float, max_connections: int) -> RedisHandle:
    deadline = _deadline_kwargs(op_timeout_s)
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        list(topology.nodes),
        sentinel_kwargs={k: v for k, v in deadline.items() if k != "health_check_interval"},
    )
    pool = BlockingSentinelPool(  # type: ignore[no-untyped-call]
        topology.service_name,
        sentinel,
        is_master=True,
        max_connections=max_connections,
        timeout=op_timeout_s,
        db=topology.db,
        username=topology.username,
        password=topology.password,
        **deadline,
    )
    return RedisHandle(aioredis.Redis.from_pool(pool), pool=pool, sentinel=sentinel)


def connect(url: str, *, op_timeout_s: float, max_connections: int) -> RedisHandle:
    """Build the client for ``url``. Nothing dials here: the first operation does."""
    scheme = url_scheme_of(url)
    if scheme in CLUSTER_SCHEMES:
        return _cluster(parse_topology(url), op_timeout_s, max_connections)
    if scheme in SENTINEL_SCHEMES:
        return _sentinel(parse_topology(url), op_timeout_s, max_connections)
    pool = make_pool(url, op_timeout_s=op_timeout_s, max_connections=max_connections)
    return RedisHandle(aioredis.Redis.from_pool(pool), pool=pool)
