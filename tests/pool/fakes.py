"""Fake connections, dialer and clock for pool tests (the httpx MockTransport pattern)."""

from __future__ import annotations

import asyncio
import itertools


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeConn:
    def __init__(self, conn_id: str) -> None:
        self.conn_id = conn_id
        self.closed = False
        self.ping_fails = False
        self.pings = 0
        self.failed_pings = 0
        self.close_calls = 0

    async def ping(self, timeout: float) -> None:
        self.pings += 1
        if self.ping_fails or self.closed:
            self.failed_pings += 1
            raise ConnectionError("pong never came")

    async def aclose(self) -> None:
        self.closed = True
        self.close_calls += 1


class FakeDialer:
    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self.dialed: list[FakeConn] = []
        self.fail = False
        self.gate: asyncio.Event | None = None  # when set, dials wait on it

    async def dial(self, account_id: str) -> FakeConn:
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise ConnectionRefusedError("upstream refused")
        conn = FakeConn(f"{account_id}:{next(self._ids)}")
        self.dialed.append(conn)
        return conn
