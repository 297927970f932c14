"""N gateway instances + a private redis-server + nginx on loopback free ports.

with run_cluster(sim.base_url, instances=3) as cluster:
    ws = await open_ws(cluster.ws_url, auth_headers(**{"session-id": "s1"}))
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import httpx

from deploy.nginx.render import render
from tests.e2e.harness import GatewayProcess, gateway_command, gateway_config, run_gateway
from tests.support import ManagedProcess, RedisServer, free_port, unique_prefix


@dataclass
class Cluster:
    redis: RedisServer
    instances: list[GatewayProcess]
    instance_ids: list[str]
    nginx: ManagedProcess
    nginx_port: int
    stack: ExitStack = field(repr=False)

    @property
    def nginx_url(self) -> str:
        return f"http://127.0.0.1:{self.nginx_port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.nginx_port}/v1/responses"

    def index_of(self, instance_id: str) -> int:
        return self.instance_ids.index(instance_id)

    def kill(self, index: int, sig: int = signal.SIGKILL) -> None:
        self.instances[index].proc.signal(sig)

    def restart(self, index: int, timeout: float = 30.0) -> None:
        """A rolling-deploy step: SIGTERM (the instance drains and exits), then the same
        instance starts again on the same port, and is ready before this returns."""
        gw = self.instances[index]
        assert gw.proc.proc is not None
        gw.proc.signal(signal.SIGTERM)
        gw.proc.proc.wait(timeout=timeout)
        fresh = ManagedProcess(
            gateway_command("module", gw.config_path, gw.port, 1),
            env={"GATEWAY_CONFIG": gw.config_path},
        ).start(wait_port=gw.port)
        self.stack.callback(fresh.stop)
        gw.proc = fresh
        wait_ready(gw.http_url)


def wait_ready(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} never became ready")
        time.sleep(0.05)


@contextmanager
def run_cluster(
    sim_base_url: str,
    *,
    instances: int = 3,
    accounts: int = 2,
    overrides: dict[str, dict[str, object]] | None = None,
) -> Iterator[Cluster]:
    nginx_bin = shutil.which("nginx") or "/usr/sbin/nginx"
    with ExitStack() as stack:
        redis = RedisServer().start()
        stack.callback(redis.stop)
        prefix = unique_prefix("cluster")
        gateways: list[GatewayProcess] = []
        ids = [f"gw-{i + 1}" for i in range(instances)]
        for instance_id in ids:
            sections: dict[str, dict[str, object]] = {
                "statestore": {"url": redis.url, "key_prefix": prefix},
                "server": {"drain_timeout_s": 20.0},
            }
            for key, values in (overrides or {}).items():
                sections[key] = {**sections.get(key, {}), **values}
            cfg = gateway_config(
                sim_base_url,
                accounts=accounts,
                statestore_url=redis.url,
                instance_id=instance_id,
                overrides=sections,
            )
            gw = stack.enter_context(run_gateway(cfg))
            wait_ready(gw.http_url)
            gateways.append(gw)
        workdir = tempfile.mkdtemp(prefix="gw-nginx-")
        stack.callback(shutil.rmtree, workdir, True)
        port = free_port()
        conf = os.path.join(workdir, "nginx.conf")
        with open(conf, "w") as fh:
            fh.write(render(port, workdir, [f"127.0.0.1:{gw.port}" for gw in gateways]))
        # As root nginx would switch workers to `nobody`, which a user namespace (the Codex
        # tests run in one) does not map: keep the workers as the current user.
        directives = "daemon off;" + (" user root root;" if os.geteuid() == 0 else "")
        nginx = ManagedProcess(
            [
                nginx_bin,
                "-p",
                workdir,
                "-c",
                conf,
                "-e",
                os.path.join(workdir, "error.log"),
                "-g",
                directives,
            ]
        ).start(wait_port=port)
        stack.callback(nginx.stop)
        yield Cluster(redis, gateways, ids, nginx, port, stack)
