"""Single-instance e2e harness: the upstream simulator and a gateway, real processes.

Both run as their own processes on free loopback ports; the test talks real
WebSockets to the gateway and inspects what the simulator received.
"""

from __future__ import annotations

import copy
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sim.control import SimControl
from tests.support import ManagedProcess, free_port, python_module, toml_dumps

CLIENT_KEY = "sk-gw-test"
SIM_KEYS = ("sk-sim-a", "sk-sim-b")


@dataclass
class SimProcess:
    proc: ManagedProcess
    port: int
    control: SimControl

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


@contextmanager
def run_sim(*extra: str) -> Iterator[SimProcess]:
    port = free_port()
    proc = ManagedProcess(
        python_module("sim", "--host", "127.0.0.1", "--port", str(port), *extra)
    ).start(wait_port=port)
    try:
        yield SimProcess(proc, port, SimControl(f"http://127.0.0.1:{port}"))
    finally:
        proc.stop()


def gateway_config(
    sim_base_url: str,
    *,
    accounts: int = 1,
    overrides: dict[str, dict[str, object]] | None = None,
    statestore_url: str = "memory://",
    instance_id: str = "gw-test",
    max_conns: int = 128,
) -> dict[str, object]:
    doc: dict[str, object] = {
        "server": {"instance_id": instance_id, "first_message_timeout_s": 60.0},
        "clients": [{"key": CLIENT_KEY, "group": "default"}],
        "accounts": [
            {
                "id": f"acct-{chr(ord('a') + i)}",
                "group": "default",
                "auth": "apikey",
                "api_key": SIM_KEYS[i],
                "base_url": sim_base_url,
                "max_conns": max_conns,
            }
            for i in range(accounts)
        ],
        "openai_ws": {"retry_backoff_initial_ms": 20, "retry_backoff_max_ms": 200},
        "statestore": {"url": statestore_url},
        "telemetry": {"log_level": "info"},
    }
    for section, values in (overrides or {}).items():
        current = doc.get(section)
        if isinstance(current, dict):
            merged = copy.deepcopy(current)
            merged.update(values)
            doc[section] = merged
        else:
            doc[section] = values
    return doc


@dataclass
class GatewayProcess:
    proc: ManagedProcess
    port: int
    config_path: str

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/responses"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


ENTRY_POINTS = ("module", "uvicorn")


def gateway_command(entry: str, config_path: str, port: int, workers: int) -> list[str]:
    """The command line of a gateway process, for each way an operator starts one."""
    common = ("--host", "127.0.0.1", "--port", str(port), "--workers", str(workers))
    if entry == "module":
        return python_module("gateway", "--config", config_path, *common)
    if entry == "uvicorn":
        # The documented factory under the plain uvicorn CLI; the config comes from the env.
        return python_module(
            "uvicorn", "gateway.app:create_app", "--factory", "--loop", "uvloop", *common
        )
    raise ValueError(f"unknown entry point {entry!r}")


@contextmanager
def run_gateway(
    config: dict[str, object], *, workers: int = 1, entry: str = "module", port: int = 0
) -> Iterator[GatewayProcess]:
    port = port or free_port()
    fd, path = tempfile.mkstemp(prefix="gw-config-", suffix=".toml")
    with os.fdopen(fd, "w") as fh:
        fh.write(toml_dumps(config))
    args = gateway_command(entry, path, port, workers)
    proc = ManagedProcess(args, env={"GATEWAY_CONFIG": path}).start(wait_port=port)
    try:
        yield GatewayProcess(proc, port, path)
    finally:
        proc.stop()
        os.unlink(path)


def auth_headers(key: str = CLIENT_KEY, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", **extra}
