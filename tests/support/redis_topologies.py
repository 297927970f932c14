"""Real multi-node Redis setups on loopback for the tests: a Redis Cluster (primaries with
replicas) and a Sentinel-managed primary with a replica and three sentinels. Free ports,
temp dirs, torn down at the end; failovers are real (SIGKILL, then a promotion)."""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import redis

from tests.support import _redis_server_binary, free_port, stop_redis, wait_for_port

SENTINEL_SERVICE = "gwstore"


def poll(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll ``check`` until it holds; fail with ``what`` past the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except (redis.RedisError, OSError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached after {timeout}s")
        time.sleep(0.05)


@dataclass
class RedisNode:
    """One redis-server (or sentinel) process in its own temp dir."""

    port: int
    workdir: str
    proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def start(cls, args: Sequence[str], *, port: int = 0, conf: str | None = None) -> RedisNode:
        port = port or free_port()
        workdir = tempfile.mkdtemp(prefix="gw-redis-topo-")
        argv = [_redis_server_binary()]
        if conf is not None:
            path = Path(workdir) / "node.conf"  # sentinels rewrite their config: writable
            path.write_text(conf.replace("@DIR@", workdir))
            argv.append(str(path))
        argv += ["--port", str(port), "--bind", "127.0.0.1", "--protected-mode", "no"]
        argv += ["--dir", workdir, "--loglevel", "warning", *args]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        node = cls(port, workdir, proc)
        wait_for_port("127.0.0.1", port, proc=proc)
        return node

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=2, decode_responses=True)

    def kill(self) -> None:
        """SIGKILL: no goodbye, the port closes at once."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)
        self.proc.kill()
        self.proc.wait(timeout=5)

    def stop(self) -> None:
        stop_redis(self.proc, self.workdir)


_DATA_ONLY = ("--save", "", "--appendonly", "no")


@dataclass
class RedisClusterSetup:
    """``primaries`` primaries, each with ``replicas`` replicas, all slots covered."""

    primaries: int = 3
    replicas: int = 1
    node_timeout_ms: int = 1000
    nodes: list[RedisNode] = field(default_factory=list)

    @property
    def url(self) -> str:
        seeds = ",".join(f"127.0.0.1:{n.port}" for n in self.nodes[: self.primaries])
        return f"redis+cluster://{seeds}"

    def start(self) -> RedisClusterSetup:
        for _ in range(self.primaries * (1 + self.replicas)):
            args = [
                "--cluster-enabled",
                "yes",
                "--cluster-port",  # the bus port: free too, not port + 10000
                str(free_port()),
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                str(self.node_timeout_ms),
                *_DATA_ONLY,
            ]
            self.nodes.append(RedisNode.start(args))
        subprocess.run(
            [
                shutil.which("redis-cli") or "/usr/bin/redis-cli",
                "--cluster",
                "create",
                *(f"127.0.0.1:{n.port}" for n in self.nodes),
                "--cluster-replicas",
                str(self.replicas),
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        poll(self._healthy, "cluster with every replica in sync")
        return self

    def _healthy(self) -> bool:
        primaries = 0
        for node in self.live_nodes():
            with node.client() as c:
                if c.cluster("info")["cluster_state"] != "ok":
                    return False
                info = c.info("replication")
                if info["role"] == "master":
                    primaries += 1
                    if info["connected_slaves"] < self.replicas:
                        return False
                elif info["master_link_status"] != "up":
                    return False
        return primaries == self.primaries

    def live_nodes(self) -> list[RedisNode]:
        return [n for n in self.nodes if n.alive]

    def node(self, port: int) -> RedisNode:
        return next(n for n in self.nodes if n.port == port)

    def primary_port_for(self, key: str) -> int:
        """The port of the live primary that serves ``key``'s slot right now."""
        for node in self.live_nodes():
            with node.client() as c:
                slot = int(c.execute_command("CLUSTER KEYSLOT", key))
                for start, end, primary, *_ in c.execute_command("CLUSTER SLOTS"):
                    if int(start) <= slot <= int(end):
                        return int(primary[1])
        raise RuntimeError("no live cluster node answered")

    def wait_promoted(self, key: str, dead_port: int, timeout: float = 30.0) -> int:
        """After ``dead_port`` died: wait until a replica serves ``key``'s slot and the
        cluster is ok again; returns the new primary's port."""
        poll(
            lambda: self.primary_port_for(key) != dead_port and self._all_ok(),
            f"promotion of a replica of {dead_port}",
            timeout,
        )
        return self.primary_port_for(key)

    def _all_ok(self) -> bool:
        for node in self.live_nodes():
            with node.client() as c:
                if c.cluster("info")["cluster_state"] != "ok":
                    return False
        return True

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


_SENTINEL_CONF = """\
sentinel monitor {service} 127.0.0.1 {primary} 2
sentinel down-after-milliseconds {service} {down_after_ms}
sentinel failover-timeout {service} 10000
sentinel parallel-syncs {service} 1
"""


@dataclass
class SentinelSetup:
    """One primary, one replica, three sentinels (quorum 2) watching ``service``."""

    down_after_ms: int = 1000
    service: str = SENTINEL_SERVICE
    primary: RedisNode | None = None
    replica: RedisNode | None = None
    sentinels: list[RedisNode] = field(default_factory=list)

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.service}"

    def start(self) -> SentinelSetup:
        self.primary = RedisNode.start(_DATA_ONLY)
        self.replica = RedisNode.start(
            [*_DATA_ONLY, "--replicaof", "127.0.0.1", str(self.primary.port)]
        )
        poll(self._replica_in_sync, "replica in sync")
        conf = _SENTINEL_CONF.format(
            service=self.service, primary=self.primary.port, down_after_ms=self.down_after_ms
        )
        for _ in range(3):
            self.sentinels.append(RedisNode.start(["--sentinel"], conf=conf))
        poll(self._sentinels_agree, "three sentinels that know the replica and each other")
        return self

    def _replica_in_sync(self) -> bool:
        assert self.replica is not None
        with self.replica.client() as c:
            return bool(c.info("replication")["master_link_status"] == "up")

    def _sentinels_agree(self) -> bool:
        for sentinel in self.sentinels:
            with sentinel.client() as c:
                state = c.sentinel_master(self.service)
                if int(state["num-other-sentinels"]) < 2 or int(state["num-slaves"]) < 1:
                    return False
        return True

    def primary_port(self) -> int:
        """The primary's port as the sentinels report it now."""
        with self.sentinels[0].client() as c:
            _, port = c.sentinel_get_master_addr_by_name(self.service)
            return int(port)

    def kill_primary(self) -> RedisNode:
        node = next(n for n in (self.primary, self.replica) if n and n.port == self.primary_port())
        node.kill()
        return node

    def wait_failover(self, dead_port: int, timeout: float = 30.0) -> int:
        """Wait until every sentinel names a new primary and it accepts writes."""

        def promoted() -> bool:
            ports = set()
            for sentinel in self.sentinels:
                with sentinel.client() as c:
                    _, port = c.sentinel_get_master_addr_by_name(self.service)
                    ports.add(int(port))
            if ports == {dead_port} or len(ports) != 1:
                return False
            with redis.Redis(port=ports.pop(), socket_timeout=2) as c:
                return c.info("replication")["role"] == "master"

        poll(promoted, f"sentinel failover away from {dead_port}", timeout)
        return self.primary_port()

    def stop(self) -> None:
        for node in (*self.sentinels, self.replica, self.primary):
            if node is not None:
                node.stop()


@contextmanager
def run_redis_cluster(primaries: int = 3, replicas: int = 1) -> Iterator[RedisClusterSetup]:
    with ExitStack() as stack:
        setup = RedisClusterSetup(primaries, replicas)
        stack.callback(setup.stop)  # also when start() fails half-way
        yield setup.start()


@contextmanager
def run_sentinel() -> Iterator[SentinelSetup]:
    with ExitStack() as stack:
        setup = SentinelSetup()
        stack.callback(setup.stop)
        yield setup.start()
