"""Fake connections and dialer for pool tests (the httpx MockTransport pattern)."""

from __future__ import annotations

import asyncio
import itertools

from tests.support import FakeClock


class FakeConn:
    def __init__(self, conn_id: str, clock: FakeClock | None = None) -> None:
        self.conn_id = conn_id
        self._clock = clock
        self.dialed_at = clock() if clock is not None else 0.0
        self.answered_at = self.dialed_at  # last successful ping
        self.closed = False
        self.ping_fails = False
        self.ping_gate: asyncio.Event | None = None  # when set, pings wait on it
        self.pings = 0
        self.failed_pings = 0
        self.close_calls = 0

    async def ping(self, timeout: float) -> None:
        self.pings += 1
        if self.ping_gate is not None:
            await self.ping_gate.wait()
        if self.ping_fails or self.closed:
            self.failed_pings += 1
            raise ConnectionError("pong never came")
        if self._clock is not None:
            self.answered_at = self._clock()

    async def aclose(self) -> None:
        self.closed = True
        self.close_calls += 1


class FakeDialer:
    def __init__(self, clock: FakeClock | None = None) -> None:
        self._ids = itertools.count(1)
        self._clock = clock
        self.dialed: list[FakeConn] = []
        self.attempts = 0
        self.fail = False
        self.fail_next = 0  # this many upcoming dials fail, then they succeed again
        self.gate: asyncio.Event | None = None  # when set, dials wait on it

    async def dial(self, account_id: str) -> FakeConn:
        self.attempts += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_next > 0:
            self.fail_next -= 1
            raise ConnectionRefusedError("upstream refused")
        if self.fail:
            raise ConnectionRefusedError("upstream refused")
        conn = FakeConn(f"{account_id}:{next(self._ids)}", self._clock)
        self.dialed.append(conn)
        return conn

    def by_id(self, conn_id: str) -> FakeConn:
        return next(conn for conn in self.dialed if conn.conn_id == conn_id)
