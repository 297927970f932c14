"""Client for the simulator's control API (``/__sim/*``).

    sim = SimControl("http://127.0.0.1:9090")
    sim.reset()                                        # clear log, faults, stored responses; close sockets
    sim.add_fault(kind="handshake_status", status=503, times=2)
    sim.add_fault(kind="close_after_events", after_events=3, code=1011)
    sim.add_fault(kind="error_event", after_events=0, status=500, code="server_error")
    sim.add_fault(kind="previous_response_not_found")  # next request with a previous_response_id
    sim.add_fault(kind="tool_output_missing")          # next request: "No tool output found ..."
    sim.add_fault(kind="silence", after_events=2)      # stop sending (half-open)
    sim.add_fault(kind="first_byte_delay_ms", delay_ms=200)
    sim.add_fault(kind="max_conn_age_s", age_s=0.5)    # older sockets get websocket_connection_limit_reached
    sim.add_fault(kind="close_after_terminal", code=1001)
    sim.add_fault(kind="http_status", status=500)      # next POST /v1/responses
    log = sim.log()       # {"connections": [...], "requests": [...], "open_connections": n}
    sim.drop_connections(idle_only=True)               # close idle upstream sockets (1001)
    sim.wait_for(lambda log: len(log["requests"]) == 2, timeout=10)

Every rule may carry ``account_key`` (match one account), ``times`` (default 1) and
``probability`` (fire on that fraction of the matching occasions; seeded, repeatable).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

SimLog = dict[str, Any]


class SimControl:
    def __init__(self, base_url: str, timeout: float = 10.0) -> None:
        self._client = httpx.Client(base_url=base_url, timeout=timeout)

    def reset(self) -> None:
        self._client.post("/__sim/reset").raise_for_status()

    def add_fault(self, **rule: Any) -> str:
        response = self._client.post("/__sim/faults", json=rule)
        response.raise_for_status()
        return str(response.json()["id"])

    def clear_faults(self) -> None:
        self._client.delete("/__sim/faults").raise_for_status()

    def log(self) -> SimLog:
        response = self._client.get("/__sim/log")
        response.raise_for_status()
        result: SimLog = response.json()
        return result

    def drop_connections(
        self, account_key: str | None = None, idle_only: bool = True, code: int = 1001
    ) -> int:
        spec = {"account_key": account_key, "idle_only": idle_only, "code": code}
        response = self._client.post("/__sim/drop", json=spec)
        response.raise_for_status()
        return int(response.json()["dropped"])

    def wait_for(self, predicate: Callable[[SimLog], bool], timeout: float = 10.0) -> SimLog:
        """Poll the log until ``predicate`` holds; fail with the last log after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            log = self.log()
            if predicate(log):
                return log
            if time.monotonic() > deadline:
                raise AssertionError(f"simulator log never satisfied the condition: {log}")
            time.sleep(0.02)

    def close(self) -> None:
        self._client.close()
