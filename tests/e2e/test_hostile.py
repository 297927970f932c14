"""Hostile and idle clients against a real gateway process (both entry points).

Raw sockets play the attacker (over-long headers, slowloris, fuzzed frames); a normal
client checks that bystanders are unaffected; /proc shows the descriptors come back.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.e2e.client import create, open_ws, read_turn, terminal, turn
from tests.e2e.harness import (
    CLIENT_KEY,
    SIM_KEYS,
    GatewayProcess,
    SimProcess,
    auth_headers,
    gateway_config,
    run_gateway,
)
from tests.support import ManagedProcess, free_port, toml_dumps

pytestmark = pytest.mark.e2e

ENTRIES = ("python -m gateway", "uvicorn --factory")
UPGRADE = (
    b"GET /v1/responses HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    b"Authorization: Bearer " + CLIENT_KEY.encode() + b"\r\n"
)


@contextmanager
def gateway_via(entry: str, config: dict[str, object]) -> Iterator[GatewayProcess]:
    if entry == "python -m gateway":
        with run_gateway(config) as gw:
            yield gw
        return
    port = free_port()
    fd, path = tempfile.mkstemp(prefix="gw-config-", suffix=".toml")
    with os.fdopen(fd, "w") as fh:
        fh.write(toml_dumps(config))
    args = [sys.executable, "-m", "uvicorn", "gateway.app:create_app", "--factory"]
    proc = ManagedProcess(
        [*args, "--host", "127.0.0.1", "--port", str(port)], env={"GATEWAY_CONFIG": path}
    ).start(wait_port=port)
    try:
        yield GatewayProcess(proc, port, path)
    finally:
        proc.stop()
        os.unlink(path)


def open_fds(gw: GatewayProcess) -> int:
    assert gw.proc.proc is not None
    return len(os.listdir(f"/proc/{gw.proc.proc.pid}/fd"))


async def fds_back_to(gw: GatewayProcess, baseline: int, timeout: float = 10.0) -> int:
    """Poll the process's descriptor count until it is back at baseline (a deadline)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (count := open_fds(gw)) > baseline and loop.time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    return count


async def warm_baseline(gw: GatewayProcess) -> int:
    """Descriptors with one finished turn behind us (pooled upstream socket included)."""
    ws = await open_ws(gw.ws_url, auth_headers())
    assert terminal(await turn(ws, create("warm")))["type"] == "response.completed"
    await ws.close()
    async with httpx.AsyncClient(base_url=gw.http_url) as client:
        assert (await client.get("/healthz")).status_code == 200
    await asyncio.sleep(0)
    return open_fds(gw)


async def bystander_turn(gw: GatewayProcess) -> float:
    started = time.monotonic()
    ws = await open_ws(gw.ws_url, auth_headers())
    try:
        events = await turn(ws, create("bystander"), timeout=10)
    finally:
        await ws.close()
    assert terminal(events)["type"] == "response.completed"
    return time.monotonic() - started


async def big_header_attempt(port: int) -> tuple[bytes, float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(UPGRADE + b"X-Big: " + b"a" * 65536 + b"\r\n\r\n")
        started = time.monotonic()
        with_status = await asyncio.wait_for(reader.read(), 5)  # read() returns at EOF
        return with_status.split(b"\r\n", 1)[0], time.monotonic() - started
    finally:
        writer.close()


@pytest.mark.parametrize("entry", ENTRIES)
async def test_200_over_long_headers_are_answered_and_closed(sim: SimProcess, entry: str) -> None:
    with gateway_via(entry, gateway_config(sim.base_url)) as gw:
        baseline = await warm_baseline(gw)
        attack = asyncio.gather(*(big_header_attempt(gw.port) for _ in range(200)))
        latency = await bystander_turn(gw)
        results = await attack
        statuses = {status for status, _ in results}
        assert statuses <= {
            b"HTTP/1.1 431 Request Header Fields Too Large",
            b"HTTP/1.1 400 Bad Request",
        }, statuses
        assert max(elapsed for _, elapsed in results) < 2.0
        assert latency < 5.0
        assert await fds_back_to(gw, baseline) <= baseline
        assert "Traceback" not in gw.proc.output()


async def slowloris(port: int, stop: asyncio.Event) -> float | None:
    """Send an endless header one byte per 100 ms; seconds until the gateway hung up."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    payload = UPGRADE + b"X-Slow: "
    try:
        for i in range(10_000):
            if reader.at_eof() or writer.is_closing():
                return time.monotonic() - started
            writer.write(payload[i : i + 1] if i < len(payload) else b"a")
            try:
                await asyncio.wait_for(reader.read(1024), 0.1)
            except TimeoutError:
                pass
            except ConnectionError:
                return time.monotonic() - started
            if stop.is_set():
                return None
        return None
    finally:
        writer.close()


@pytest.mark.parametrize("entry", ENTRIES)
async def test_500_slowloris_connections_are_cut_by_the_handshake_deadline(
    sim: SimProcess, entry: str
) -> None:
    cfg = gateway_config(sim.base_url, overrides={"server": {"handshake_timeout_s": 2.0}})
    with gateway_via(entry, cfg) as gw:
        baseline = await warm_baseline(gw)
        stop = asyncio.Event()
        attackers = [asyncio.create_task(slowloris(gw.port, stop)) for _ in range(500)]
        try:
            latency = await bystander_turn(gw)
            closed_after = await asyncio.wait_for(asyncio.gather(*attackers), 20)
        finally:
            stop.set()
        assert all(t is not None for t in closed_after), "a slow request was never cut off"
        assert max(t for t in closed_after if t is not None) < 2.0 + 3.0
        assert latency < 5.0
        assert await fds_back_to(gw, baseline) <= baseline
        assert "Traceback" not in gw.proc.output()


async def test_refusals_complete_the_handshake_without_error_lines(sim: SimProcess) -> None:
    with gateway_via("uvicorn --factory", gateway_config(sim.base_url)) as gw:
        for _ in range(20):
            with pytest.raises(InvalidStatus) as refused:
                await open_ws(gw.ws_url, {"Authorization": "Bearer wrong"})
            assert refused.value.response.status_code == 401
        output = gw.proc.output()
    assert "without completing handshake" not in output
    assert '"level":"error"' not in output and "ERROR" not in output


async def open_idle(url: str, count: int) -> list[Any]:
    return list(await asyncio.gather(*(open_ws(url, auth_headers()) for _ in range(count))))


async def test_passthrough_idle_sockets_hold_no_upstream_socket(sim: SimProcess) -> None:
    sim.control.reset()
    cfg = gateway_config(sim.base_url, overrides={"openai_ws": {"mode": "passthrough"}})
    with run_gateway(cfg) as gw:
        idle = await open_idle(gw.ws_url, 200)
        try:
            assert sim.control.log().open_connections == 0
            latency = await bystander_turn(gw)
            assert latency < 1.0
            assert sim.control.log().open_connections <= 1  # the bystander's, back in the pool
        finally:
            await asyncio.gather(*(ws.close() for ws in idle))


def fuzz_frames(rng: random.Random, count: int) -> Iterator[tuple[str, str | bytes]]:
    """(kind, frame) pairs a buggy or hostile client might send; never a valid request."""
    deep = "[" * 100_000 + "]" * 100_000
    kinds = [
        ("deep_input", lambda: '{"type":"response.create","input":' + deep + "}"),
        ("deep_object", lambda: '{"a":' + '{"b":' * 50_000 + "1" + "}" * 50_000 + "}"),
        (
            "huge_array",
            lambda: '{"type":"response.create","input":[' + ",".join(["0"] * 100_001) + "]}",
        ),
        ("wrong_type_input", lambda: '{"type":"response.create","model":"m","input":5}'),
        ("wrong_type_model", lambda: '{"type":"response.create","model":[1],"input":"x"}'),
        ("not_object", lambda: rng.choice(["[]", "1", '"s"', "null", "true"])),
        ("nan", lambda: '{"type":"response.create","temperature":NaN,"input":"x"}'),
        ("surrogate", lambda: '{"type":"response.create","model":"\\ud800","input":1}'),
        ("truncated", lambda: '{"type":"response.create","input":[{"type":"mess'),
        ("binary_utf8", lambda: b"\xff\xfe{}"),
        ("invalid_utf8_text", lambda: b'{"type":"\xc3\x28"}'),
        ("garbage", lambda: bytes(rng.getrandbits(8) for _ in range(32)).hex()),
    ]
    for _ in range(count):
        kind, make = rng.choice(kinds)
        yield kind, make()


async def fuzz_worker(
    url: str, frames: list[tuple[str, str | bytes]], replies: list[dict[str, Any]]
) -> int:
    """Sends each frame and reads its answer; reconnects when the gateway closed. Reconnects."""
    reconnects = 0
    ws = await open_ws(url, auth_headers())
    for kind, frame in frames:
        try:
            if kind == "invalid_utf8_text":
                assert isinstance(frame, bytes)
                await ws.send(frame, text=True)
                await ws.wait_closed()
                assert ws.close_code == 1007
                raise ConnectionClosed(None, None)
            await ws.send(frame)
            replies.append(terminal(await read_turn(ws, timeout=15)))
        except ConnectionClosed:
            reconnects += 1
            ws = await open_ws(url, auth_headers())
    await ws.close()
    return reconnects


@pytest.mark.timeout(300)
@pytest.mark.parametrize("mode", ["ctx_pool", "passthrough"])
async def test_10000_fuzzed_frames_get_4xx_and_no_tracebacks(sim: SimProcess, mode: str) -> None:
    cfg = gateway_config(sim.base_url, overrides={"openai_ws": {"mode": mode}})
    rng = random.Random(15)
    frames = list(fuzz_frames(rng, 10_000))
    with run_gateway(cfg) as gw:
        replies: list[dict[str, Any]] = []
        workers = [fuzz_worker(gw.ws_url, frames[i::20], replies) for i in range(20)]
        fuzzing = asyncio.gather(*workers)
        bystanders = [await bystander_turn(gw) for _ in range(3)]
        await fuzzing
        output = gw.proc.output()
    statuses = [r.get("status") for r in replies if r.get("type") == "error"]
    assert all(r["type"] in ("error", "response.completed") for r in replies)
    assert len(replies) + sum(1 for k, _ in frames if k == "invalid_utf8_text") == len(frames)
    assert statuses and all(isinstance(s, int) and 400 <= s < 500 for s in statuses), sorted(
        set(map(str, statuses))
    )
    assert all(latency < 10 for latency in bystanders)
    assert "Traceback" not in output
    assert '"level":"error"' not in output


LEAKS = (*SIM_KEYS, "sk-sim", "127.0.0.1")


async def collect_ws(url: str, payload: str) -> bytes:
    """Everything one client receives for one turn: handshake denial body or frames."""
    try:
        ws = await open_ws(url, auth_headers())
    except InvalidStatus as exc:
        return bytes(exc.response.body or b"")
    got = b""
    try:
        await ws.send(payload)
        for event in await read_turn(ws, timeout=20):
            got += json.dumps(event).encode()
    except ConnectionClosed as exc:
        got += (exc.rcvd.reason if exc.rcvd else "").encode()
    finally:
        await ws.close()
    return got


async def collect_http(gw: GatewayProcess) -> bytes:
    async with httpx.AsyncClient(base_url=gw.http_url, timeout=20) as client:
        body = {"model": "gpt-test", "input": "hi", "stream": True}
        response = await client.post("/v1/responses", json=body, headers=auth_headers())
        return response.content


def assert_no_leak(received: bytes, *extra: str) -> None:
    text = received.decode("utf-8", "replace")
    for needle in (*LEAKS, *extra):
        assert needle not in text, f"{needle!r} reached a client: {text[:400]}"


KEY_MESSAGE = f"Incorrect API key provided: {SIM_KEYS[0][:6]}***{SIM_KEYS[0][-1:]} ({SIM_KEYS[0]})"


@pytest.mark.parametrize("mode", ["passthrough", "ctx_pool"])
async def test_no_key_fragment_host_or_port_reaches_clients(sim: SimProcess, mode: str) -> None:
    sim.control.reset()
    cfg = gateway_config(sim.base_url, overrides={"openai_ws": {"mode": mode}})
    port = str(sim.port)
    with run_gateway(cfg) as gw:
        received = b""
        sim.control.add_fault(kind="handshake_status", status=401, message=KEY_MESSAGE, times=20)
        received += await collect_ws(gw.ws_url, create("handshake 401"))
        sim.control.clear_faults()
        sim.control.add_fault(kind="http_status", status=401, message=KEY_MESSAGE, times=5)
        received += await collect_http(gw)
        sim.control.clear_faults()
        sim.control.add_fault(
            kind="error_event", status=401, code="invalid_api_key", message=KEY_MESSAGE
        )
        received += await collect_ws(gw.ws_url, create("error event 401"))
        sim.control.clear_faults()
        sim.control.add_fault(kind="close_after_events", after_events=1, code=1011, times=5)
        received += await collect_ws(gw.ws_url, create("cut"))
        sim.control.clear_faults()
    assert_no_leak(received, port)
    assert b"upstream_account_error" in received and b"acct-a" in received
    # The WebSocket refused and the HTTP fallback refused too (ctx_pool falls back).
    with run_gateway(cfg) as gw:
        sim.control.add_fault(kind="handshake_status", status=401, message=KEY_MESSAGE, times=50)
        sim.control.add_fault(kind="http_status", status=401, message=KEY_MESSAGE, times=50)
        received = await collect_ws(gw.ws_url, create("both refused"))
        sim.control.clear_faults()
    assert_no_leak(received, port)
    assert b"upstream_account_error" in received
    # Upstream down: nothing listens on the account's port.
    dead = free_port()
    cfg = gateway_config(
        f"http://127.0.0.1:{dead}/v1",
        overrides={"openai_ws": {"mode": mode, "retry_total_budget_ms": 300}},
    )
    with run_gateway(cfg) as gw:
        received = await collect_ws(gw.ws_url, create("down"))
        received += await collect_http(gw)
    assert received, "the client got no answer at all"
    assert_no_leak(received, str(dead))


async def test_pending_handshake_cap_refuses_extra_connections_at_once(sim: SimProcess) -> None:
    cfg = gateway_config(
        sim.base_url,
        overrides={"server": {"max_pending_handshakes": 10, "handshake_timeout_s": 2.0}},
    )
    with gateway_via("uvicorn --factory", cfg) as gw:
        held = [await asyncio.open_connection("127.0.0.1", gw.port) for _ in range(10)]
        for _, writer in held:
            writer.write(b"GET /v1/responses HTTP/1.1\r\n")  # and never finish
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        answer = await asyncio.wait_for(reader.read(), 2)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 503 ")
        # The held ones are cut by the deadline; then the gateway serves again.
        for held_reader, held_writer in held:
            assert (await asyncio.wait_for(held_reader.read(), 5)).startswith(b"HTTP/1.1 408 ")
            held_writer.close()
        assert await bystander_turn(gw) < 5.0


async def test_header_section_over_budget_is_431_even_when_sent_in_small_pieces(
    sim: SimProcess,
) -> None:
    cfg = gateway_config(sim.base_url, overrides={"server": {"max_header_bytes": 4096}})
    with gateway_via("python -m gateway", cfg) as gw:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(b"POST /v1/responses HTTP/1.1\r\nHost: gw\r\n")
        # 9 unfinished headers of ~510 bytes in separate writes: only the last one
        # crosses the budget, so nothing is written after the gateway refuses.
        for i in range(9):
            writer.write(f"X-Pad-{i}: ".encode() + b"a" * 500 + b"\r\n")
            await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 431 ")


async def test_per_client_key_socket_cap(sim: SimProcess) -> None:
    cfg = gateway_config(sim.base_url, overrides={"server": {"max_sockets_per_client_key": 3}})
    with run_gateway(cfg) as gw:
        first = await open_idle(gw.ws_url, 3)
        with pytest.raises(InvalidStatus) as refused:
            await open_ws(gw.ws_url, auth_headers())
        assert refused.value.response.status_code == 429
        assert b"too_many_connections" in (refused.value.response.body or b"")
        await first[0].close()
        # The slot comes back once the server has seen the close: poll with a deadline.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while True:
            try:
                again = await open_ws(gw.ws_url, auth_headers())
                break
            except InvalidStatus:
                assert loop.time() < deadline, "the closed socket's slot never came back"
                await asyncio.sleep(0.05)
        await asyncio.gather(again.close(), *(ws.close() for ws in first[1:]))
