"""Clients for the simulator's control API (``/__sim/*``): ``SimControl`` (sync) and
``AsyncSimControl`` (same methods, awaitable).

Start a simulator::

    python -m sim --host 127.0.0.1 --port 9090 [--keys sk-sim-a,sk-sim-b] [--timestamps]

or in-process: ``sim.app.create_sim_app(SimConfig(...))`` under uvicorn.

Drive it::

    sim = SimControl("http://127.0.0.1:9090")
    sim.reset()                     # clear log, faults, persisted responses; close sockets (1001)
    rule_id = sim.add_fault(kind="close_after_events", after_events=3, code=1011)
    sim.remove_fault(rule_id); sim.clear_faults(); sim.faults()   # list rules + fired counts
    log = sim.log()                 # SimLog (see below)
    sim.drop_connections(account_key=None, idle_only=True, mode="close", code=1001) -> int
    log = sim.wait_for(lambda log: len(log.requests) == 2, timeout=10)   # polls until true

Fault rules (``add_fault(**rule)``; every rule fires ``times`` times, default 1)::

    kind="handshake_status", status=503, retry_after=2     refuse the next handshake(s)
    kind="close_after_events", after_events=K, code=1011    close the socket after K events
                                                            (mode="abort": drop TCP, no frame)
    kind="error_event", after_events=K, status=500, code="server_error", message=...
                                                            K=0: instead of the response
    kind="previous_response_not_found"                      next request with a previous id
    kind="tool_output_missing"                              next continuation: "No tool output
                                                            found for function call <id>."
    kind="silence", after_events=K, duration_s=60           half-open: no events, no pongs
    kind="first_byte_delay_ms", delay_ms=200                delay before the first event
    kind="max_conn_age_s", age_s=0.5                        older sockets: error
                                                            websocket_connection_limit_reached,
                                                            then close (code, default 1000)
    kind="close_after_terminal", code=1001 | mode="abort"   drop the idle socket after a turn
    kind="http_status", status=429, retry_after=1           the next POST /v1/responses

Match fields on any rule: ``account_key``, ``transport`` ("ws" | "http" | "any"),
``generate`` (False: warm-ups only; True: real responses only), ``match_text`` (substring
of the last user message), ``skip`` (let N matching occasions pass first), ``probability``
(fire on that fraction, seeded).

``SimLog`` is both typed and dict-like: ``log.requests`` / ``log.connections`` are
``RequestRecord`` / ``ConnectionRecord`` structs (sim/records.py) and
``log.counters`` a ``Counters``; ``log["requests"]`` gives the raw JSON dicts. Request
``outcome``: "in_flight", "completed", "error:<code or message>", "client_gone",
"closed:<code>", "aborted", "silent", "http:<status>", "ignored". ``completed_delivered``
says the terminal event was written to the socket; ``raw`` is the exact frame text.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx
import msgspec

from sim.records import ConnectionRecord, Counters, RequestRecord

__all__ = ["AsyncSimControl", "SimControl", "SimLog"]


class SimLog(dict[str, Any]):
    """The simulator's log: the raw JSON dict (so ``log["requests"]`` and ``json.dumps(log)``
    work) plus typed attributes ``connections``, ``requests``, ``counters``."""

    def __init__(self, raw: dict[str, Any]) -> None:
        super().__init__(raw)
        self.connections = msgspec.convert(raw["connections"], list[ConnectionRecord])
        self.requests = msgspec.convert(raw["requests"], list[RequestRecord])
        self.counters = msgspec.convert(raw["counters"], Counters)
        self.open_connections = int(raw["open_connections"])

    @property
    def raw(self) -> dict[str, Any]:
        return dict(self)

    # -- conveniences -------------------------------------------------------------------
    def ws_requests(self) -> list[RequestRecord]:
        return [r for r in self.requests if r.transport == "ws"]

    def http_requests(self) -> list[RequestRecord]:
        return [r for r in self.requests if r.transport == "http"]

    def real_requests(self) -> list[RequestRecord]:
        """``response.create`` / POST requests that were not warm-ups."""
        return [
            r
            for r in self.requests
            if r.generate is not False and (r.transport == "http" or r.type == "response.create")
        ]

    def outcomes(self) -> list[str]:
        return [r.outcome for r in self.requests]

    def accepted_connections(self) -> list[ConnectionRecord]:
        return [c for c in self.connections if c.handshake_status == 101]

    def conn_ids_used(self) -> set[str]:
        """Upstream sockets that carried at least one request."""
        return {r.conn_id for r in self.requests if r.conn_id is not None}

    def requests_on(self, conn_id: str) -> list[RequestRecord]:
        return [r for r in self.requests if r.conn_id == conn_id]

    def by_response_id(self, response_id: str) -> RequestRecord | None:
        return next((r for r in self.requests if r.response_id == response_id), None)

    def connection(self, conn_id: str) -> ConnectionRecord | None:
        return next((c for c in self.connections if c.conn_id == conn_id), None)


# What a request carries and what its answer means are the same for both clients; only
# the I/O differs (the way httpx pairs Client and AsyncClient).
def _drop_spec(account_key: str | None, idle_only: bool, mode: str, code: int) -> dict[str, Any]:
    return {"account_key": account_key, "idle_only": idle_only, "mode": mode, "code": code}


def _log_params(since: int, raw: bool) -> dict[str, str]:
    return {"since": str(since), "raw": "1" if raw else "0"}


def _body(response: httpx.Response) -> Any:
    response.raise_for_status()
    return response.json()


def _fault_id(response: httpx.Response) -> str:
    if response.status_code == 400:  # the rule itself is wrong: the caller's mistake
        raise ValueError(response.json().get("error", response.text))
    return str(_body(response)["id"])


def _never_satisfied(log: SimLog) -> AssertionError:
    return AssertionError(f"simulator log never satisfied the condition: {dict(log)}")


class SimControl:
    """Synchronous control client (``httpx.Client``); usable as a context manager."""

    def __init__(self, base_url: str, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = httpx.Client(base_url=self.base_url, timeout=timeout)

    def __enter__(self) -> SimControl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def reset(self) -> None:
        self._client.post("/__sim/reset").raise_for_status()

    def add_fault(self, **rule: Any) -> str:
        """Add a fault rule (see the module docstring); returns its id."""
        return _fault_id(self._client.post("/__sim/faults", json=rule))

    def remove_fault(self, rule_id: str) -> bool:
        return bool(_body(self._client.delete(f"/__sim/faults/{rule_id}"))["ok"])

    def clear_faults(self) -> None:
        self._client.delete("/__sim/faults").raise_for_status()

    def faults(self) -> list[dict[str, Any]]:
        """The live rules, each with its remaining ``times`` and ``fired`` count."""
        rules: list[dict[str, Any]] = _body(self._client.get("/__sim/faults"))
        return rules

    def log(self, since: int = 0, raw: bool = True) -> SimLog:
        """The log; ``since`` skips the first N requests, ``raw=False`` blanks frame texts."""
        return SimLog(_body(self._client.get("/__sim/log", params=_log_params(since, raw))))

    def drop_connections(
        self,
        account_key: str | None = None,
        idle_only: bool = True,
        mode: str = "close",
        code: int = 1001,
    ) -> int:
        """Close matching upstream sockets (``mode="abort"``: drop TCP); returns how many."""
        spec = _drop_spec(account_key, idle_only, mode, code)
        return int(_body(self._client.post("/__sim/drop", json=spec))["dropped"])

    def healthy(self) -> bool:
        try:
            return self._client.get("/__sim/healthz").status_code == 200
        except httpx.HTTPError:
            return False

    def wait_for(
        self, predicate: Callable[[SimLog], bool], timeout: float = 10.0, interval: float = 0.02
    ) -> SimLog:
        """Poll the log until ``predicate`` holds; AssertionError with the last log on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            log = self.log()
            if predicate(log):
                return log
            if time.monotonic() > deadline:
                raise _never_satisfied(log)
            time.sleep(interval)

    def close(self) -> None:
        self._client.close()


class AsyncSimControl:
    """The same API as ``SimControl`` on ``httpx.AsyncClient``; every method is awaitable."""

    def __init__(self, base_url: str, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = httpx.AsyncClient(base_url=self.base_url, timeout=timeout)

    async def __aenter__(self) -> AsyncSimControl:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def reset(self) -> None:
        (await self._client.post("/__sim/reset")).raise_for_status()

    async def add_fault(self, **rule: Any) -> str:
        return _fault_id(await self._client.post("/__sim/faults", json=rule))

    async def remove_fault(self, rule_id: str) -> bool:
        return bool(_body(await self._client.delete(f"/__sim/faults/{rule_id}"))["ok"])

    async def clear_faults(self) -> None:
        (await self._client.delete("/__sim/faults")).raise_for_status()

    async def faults(self) -> list[dict[str, Any]]:
        rules: list[dict[str, Any]] = _body(await self._client.get("/__sim/faults"))
        return rules

    async def log(self, since: int = 0, raw: bool = True) -> SimLog:
        return SimLog(_body(await self._client.get("/__sim/log", params=_log_params(since, raw))))

    async def drop_connections(
        self,
        account_key: str | None = None,
        idle_only: bool = True,
        mode: str = "close",
        code: int = 1001,
    ) -> int:
        spec = _drop_spec(account_key, idle_only, mode, code)
        return int(_body(await self._client.post("/__sim/drop", json=spec))["dropped"])

    async def healthy(self) -> bool:
        try:
            return (await self._client.get("/__sim/healthz")).status_code == 200
        except httpx.HTTPError:
            return False

    async def wait_for(
        self, predicate: Callable[[SimLog], bool], timeout: float = 10.0, interval: float = 0.02
    ) -> SimLog:
        deadline = time.monotonic() + timeout
        while True:
            log = await self.log()
            if predicate(log):
                return log
            if time.monotonic() > deadline:
                raise _never_satisfied(log)
            await asyncio.sleep(interval)

    async def aclose(self) -> None:
        await self._client.aclose()
