"""The turn boundary under real timing: real gateway processes (both entry points), the
simulator, a real redis-server.

Clients here send their next ``response.create`` the instant the previous terminal event
arrives, as SDK loops, fast tools and chained warm-ups do; faults are injected mid-run.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection

from tests.e2e.client import create, function_calls, open_ws, read_turn, response_id, user_message
from tests.e2e.harness import (
    ENTRY_POINTS,
    GatewayProcess,
    SimProcess,
    auth_headers,
    gateway_config,
    run_gateway,
)
from tests.e2e.soak_turns import soak
from tests.support import RedisServer, unique_prefix

pytestmark = pytest.mark.e2e

CALL = '[[sim call exec_command {"cmd":"echo ok"}]]'


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own: it gets frozen mid-run."""
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.stop()


def _redis_config(
    sim: SimProcess, redis: RedisServer, **overrides: dict[str, object]
) -> dict[str, object]:
    sections: dict[str, dict[str, object]] = {
        "statestore": {"url": redis.url, "key_prefix": unique_prefix("life") + ":"},
    }
    for name, values in overrides.items():
        sections.setdefault(name, {}).update(values)
    return gateway_config(sim.base_url, overrides=sections)


class Progress:
    """Turns completed so far, and a way to wait for a count to be reached."""

    def __init__(self) -> None:
        self.done = 0
        self._waiters: list[tuple[int, asyncio.Event]] = []

    def step(self) -> None:
        self.done += 1
        for at, event in self._waiters:
            if self.done >= at:
                event.set()

    async def reached(self, at: int) -> None:
        event = asyncio.Event()
        self._waiters.append((at, event))
        if self.done >= at:
            event.set()
        await event.wait()


async def _chain(ws: ClientConnection, turns: int, progress: Progress, errors: list[str]) -> None:
    """``turns`` store:false continuations, each sent the instant the previous one ended."""
    previous: str | None = None
    for index in range(turns):
        fields: dict[str, Any] = {} if previous is None else {"previous_response_id": previous}
        await ws.send(create(f"turn {index}", **fields))
        events = await read_turn(ws, timeout=30)
        last = events[-1]
        if last["type"] != "response.completed":
            errors.append(json.dumps(last)[:300])
            previous = None
        else:
            previous = response_id(events)
        progress.step()


async def _freeze_redis_when(redis: RedisServer, progress: Progress, at: int) -> None:
    """Freeze Redis for one second once ``at`` turns have completed."""
    await progress.reached(at)
    redis.pause()
    try:
        await asyncio.sleep(1.0)  # the length of the partition, not a wait for something
    finally:
        redis.resume()


async def _run_back_to_back(
    gw: GatewayProcess, redis: RedisServer, sockets: int, turns_each: int, freeze: bool
) -> tuple[int, list[str]]:
    conns = [await open_ws(gw.ws_url, auth_headers()) for _ in range(sockets)]
    progress = Progress()
    errors: list[str] = []
    try:
        chains = [_chain(ws, turns_each, progress, errors) for ws in conns]
        jobs: list[Any] = list(chains)
        if freeze:
            jobs.append(_freeze_redis_when(redis, progress, (sockets * turns_each) // 3))
        async with asyncio.timeout(240):
            await asyncio.gather(*jobs)
    finally:
        for ws in conns:
            await ws.close()
    return progress.done, errors


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("freeze", [False, True], ids=["redis_ok", "redis_frozen_1s"])
async def test_back_to_back_turns_are_never_refused(
    sim: SimProcess, own_redis: RedisServer, entry: str, freeze: bool
) -> None:
    with run_gateway(_redis_config(sim, own_redis), entry=entry) as gw:
        done, errors = await _run_back_to_back(gw, own_redis, 1, 500, freeze)
        assert (done, errors) == (500, [])
        done, errors = await _run_back_to_back(gw, own_redis, 10, 100, freeze)
        assert (done, errors) == (1000, [])


async def test_tool_loop_back_to_back_with_redis_frozen(
    sim: SimProcess, own_redis: RedisServer
) -> None:
    with run_gateway(_redis_config(sim, own_redis)) as gw:
        ws = await open_ws(gw.ws_url, auth_headers())
        progress = Progress()
        freezer = asyncio.create_task(_freeze_redis_when(own_redis, progress, 5))
        try:
            await ws.send(create(f"start {CALL}"))
            events = await read_turn(ws)
            for step in range(20):
                assert events[-1]["type"] == "response.completed", events[-1]
                call_id = function_calls(events)[0]["call_id"]
                answer = {"type": "function_call_output", "call_id": call_id, "output": "ok"}
                await ws.send(
                    create(
                        previous_response_id=response_id(events),
                        items=[answer, user_message(f"step {step} {CALL}")],
                    )
                )
                events = await read_turn(ws)
                progress.step()
            assert events[-1]["type"] == "response.completed", events[-1]
        finally:
            await ws.close()
            await freezer


async def _metric(gw: GatewayProcess, name: str, **labels: str) -> float:
    async with httpx.AsyncClient(base_url=gw.http_url) as client:
        text = (await client.get("/metrics")).text
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def _eventually_leased_zero(gw: GatewayProcess, timeout: float = 30.0) -> float:
    deadline = time.monotonic() + timeout
    leased = await _metric(gw, "gateway_pool_connections", state="leased")
    while leased and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        leased = await _metric(gw, "gateway_pool_connections", state="leased")
    return leased


async def test_half_open_upstream_before_any_event_is_retried_on_a_fresh_socket(
    sim: SimProcess,
) -> None:
    sim.control.reset()
    with run_gateway(gateway_config(sim.base_url)) as gw:
        sim.control.add_fault(kind="silence", after_events=0, times=1, duration_s=120)
        ws = await open_ws(gw.ws_url, auth_headers())
        started = time.monotonic()
        try:
            await ws.send(create("hello"))
            events = await read_turn(ws, timeout=40)
        finally:
            await ws.close()
        assert events[-1]["type"] == "response.completed"
        assert time.monotonic() - started < 30  # default liveness settings
        assert await _eventually_leased_zero(gw) == 0
        conns = sim.control.log().accepted_connections()
        assert len(conns) >= 2  # the retry went out on a fresh upstream socket


async def test_half_open_upstream_mid_stream_ends_in_an_error_event(sim: SimProcess) -> None:
    sim.control.reset()
    with run_gateway(gateway_config(sim.base_url)) as gw:
        sim.control.add_fault(kind="silence", after_events=3, times=1, duration_s=120)
        ws = await open_ws(gw.ws_url, auth_headers())
        started = time.monotonic()
        try:
            await ws.send(create("hello [[sim deltas=20]]"))
            events = await read_turn(ws, timeout=40)
            assert time.monotonic() - started < 30
            assert events[-1]["type"] == "error"
            assert events[-1]["error"]["code"] == "upstream_stream_interrupted"
            # The socket is still usable: the next turn completes.
            await ws.send(create("again"))
            assert (await read_turn(ws))[-1]["type"] == "response.completed"
        finally:
            await ws.close()
        assert await _eventually_leased_zero(gw) == 0


async def test_half_open_upstream_after_the_client_left_frees_the_socket(sim: SimProcess) -> None:
    sim.control.reset()
    with run_gateway(gateway_config(sim.base_url)) as gw:
        sim.control.add_fault(kind="silence", after_events=2, times=1, duration_s=120)
        ws = await open_ws(gw.ws_url, auth_headers())
        await ws.send(create("hello [[sim deltas=20]]"))
        await ws.recv()
        await ws.close()
        assert await _eventually_leased_zero(gw, timeout=30) == 0


@pytest.mark.parametrize("entry", ENTRY_POINTS)
async def test_sigterm_drains_twenty_turns_under_each_entry_point(
    sim: SimProcess, entry: str
) -> None:
    drain_timeout = 20.0
    cfg = gateway_config(sim.base_url, overrides={"server": {"drain_timeout_s": drain_timeout}})
    with run_gateway(cfg, entry=entry) as gw:
        conns = [await open_ws(gw.ws_url, auth_headers()) for _ in range(20)]
        for ws in conns:
            await ws.send(create("long [[sim deltas=200 delay_ms=5]]"))
        for ws in conns:
            assert json.loads(await ws.recv())["type"] == "response.created"
        gw.proc.signal(signal.SIGTERM)
        signalled = time.monotonic()

        async def finish(ws: ClientConnection) -> int:
            deltas = 0
            async with asyncio.timeout(drain_timeout + 5):
                while True:
                    event = json.loads(await ws.recv())
                    deltas += event["type"] == "response.output_text.delta"
                    if event["type"] in ("response.completed", "error"):
                        return deltas if event["type"] == "response.completed" else -1

        results = await asyncio.gather(*(finish(ws) for ws in conns))
        assert results == [200] * 20
        assert gw.proc.proc is not None
        code = await asyncio.to_thread(gw.proc.proc.wait, drain_timeout + 5)
        assert code == 0
        assert time.monotonic() - signalled < drain_timeout + 5
        for ws in conns:
            await ws.close()


async def test_continuation_of_an_orphan_output_on_another_instance_with_redis_frozen(
    sim: SimProcess, own_redis: RedisServer
) -> None:
    """Instance 2 cannot learn the previous response's calls (Redis is frozen, its cache is
    cold), so it keeps the client's outputs; the upstream rejects the orphan, and the
    gateway drops it and resends instead of showing the client the rejection."""
    sim.control.reset()
    cfg = _redis_config(sim, own_redis, openai_ws={"retry_total_budget_ms": 8000})
    with run_gateway(cfg) as gw1, run_gateway({**cfg, "server": {"instance_id": "gw-2"}}) as gw2:
        ws1 = await open_ws(gw1.ws_url, auth_headers())
        try:
            await ws1.send(create("remember 7", store=True))
            first = await read_turn(ws1)
        finally:
            await ws1.close()
        assert first[-1]["type"] == "response.completed"
        own_redis.pause()
        try:
            ws2 = await open_ws(gw2.ws_url, auth_headers())
            try:
                orphan = {"type": "function_call_output", "call_id": "call_never", "output": "x"}
                await ws2.send(
                    create(
                        store=True,
                        previous_response_id=response_id(first),
                        items=[orphan, user_message("which number?")],
                    )
                )
                second = await read_turn(ws2, timeout=30)
            finally:
                await ws2.close()
        finally:
            own_redis.resume()
    assert [e for e in second if e["type"] == "error"] == []
    assert second[-1]["type"] == "response.completed"
    last = sim.control.log().real_requests()[-1]
    assert "call_never" not in last.raw and "which number?" in last.raw


async def test_socket_response_bookkeeping_stays_bounded_without_scrapes(
    sim: SimProcess, own_redis: RedisServer
) -> None:
    """Upstream sockets churn (few may stay idle); what the gateway remembers about them
    must go away with them, with no /metrics scrape to prune it."""
    cfg = _redis_config(sim, own_redis, openai_ws={"max_idle_per_account": 2})
    with run_gateway(cfg) as gw:
        result = await soak(gw, turns=2_000, sockets=10, every=500)
    assert result.turns == 2_000 and result.failed == 0
    assert result.upstream_sockets > 0
    assert result.holding <= result.upstream_sockets


async def test_a_stored_response_continued_with_store_false_from_a_new_socket(
    sim: SimProcess, own_redis: RedisServer
) -> None:
    """The previous response was stored, so the upstream can resolve it from any socket,
    whatever the new request says about storing itself."""
    sim.control.reset()
    with run_gateway(_redis_config(sim, own_redis)) as gw:
        for _ in range(10):
            ws1 = await open_ws(gw.ws_url, auth_headers())
            try:
                await ws1.send(create("remember 7", store=True))
                first = await read_turn(ws1)
            finally:
                await ws1.close()
            ws2 = await open_ws(gw.ws_url, auth_headers())
            busy = await open_ws(gw.ws_url, auth_headers())
            try:
                # Another client takes the socket that produced the stored response.
                await busy.send(create("keep busy [[sim deltas=50 delay_ms=5]]"))
                await ws2.send(
                    create(
                        previous_response_id=response_id(first),
                        items=[user_message("which number?")],
                        store=False,
                    )
                )
                second = await read_turn(ws2)
                await read_turn(busy)
            finally:
                await ws2.close()
                await busy.close()
            assert second[-1]["type"] == "response.completed", second[-1]


async def test_an_idle_client_socket_is_closed_but_a_long_turn_is_not_idleness(
    sim: SimProcess,
) -> None:
    sim.control.reset()
    server = {"first_message_timeout_s": 0.3, "client_idle_timeout_s": 0.3}
    with run_gateway(gateway_config(sim.base_url, overrides={"server": server})) as gw:
        silent = await open_ws(gw.ws_url, auth_headers())
        await silent.wait_closed()  # sent nothing: closed at its first-message deadline
        assert silent.close_code == 1001 and silent.close_reason == "idle timeout"

        ws = await open_ws(gw.ws_url, auth_headers())
        # 40 deltas 20 ms apart: a turn of ~0.8 s, over twice the idle timeout.
        await ws.send(create("long [[sim deltas=40 delay_ms=20]]"))
        events = await read_turn(ws, timeout=30)
        assert events[-1]["type"] == "response.completed"
        await ws.send(create("again"))  # the socket is still open after the long turn
        assert (await read_turn(ws))[-1]["type"] == "response.completed"
        await ws.wait_closed()  # then idle: closed
        assert ws.close_code == 1001
