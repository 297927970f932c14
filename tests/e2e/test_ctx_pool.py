"""ctx_pool end to end: real gateway processes, the simulator, a real Redis."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.client import (
    create,
    function_calls,
    open_ws,
    output_text,
    response_id,
    terminal,
    turn,
    user_message,
)
from tests.e2e.harness import (
    GatewayProcess,
    SimProcess,
    auth_headers,
    gateway_config,
    run_gateway,
)
from tests.support import RedisServer, unique_prefix

pytestmark = pytest.mark.e2e

CALL = '[[sim call exec_command {"cmd":"echo ok"}]]'


@pytest.fixture(scope="module")
def gateway(sim: SimProcess) -> Iterator[GatewayProcess]:
    with run_gateway(gateway_config(sim.base_url)) as gw:
        yield gw


@pytest.fixture(autouse=True)
def _reset(sim: SimProcess) -> None:
    sim.control.reset()


def _ws_requests(log: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in log["requests"] if r["transport"] == "ws" and r.get("generate") is not False]


def _sent(req: dict[str, Any]) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(req["raw"])
    return parsed


async def test_missing_tool_output_gets_aborted_injected(
    sim: SimProcess, gateway: GatewayProcess
) -> None:
    ws = await open_ws(gateway.ws_url, auth_headers())
    try:
        first = await turn(ws, create(f"run it {CALL}"))
        call_id = function_calls(first)[0]["call_id"]
        # The client moves on without answering the call (an interrupted turn).
        second = await turn(
            ws, create(previous_response_id=response_id(first), items=[user_message("never mind")])
        )
    finally:
        await ws.close()
    assert terminal(second)["type"] == "response.completed"
    sent = _sent(_ws_requests(sim.control.log())[-1])
    outputs = [i for i in sent["input"] if i.get("type") == "function_call_output"]
    assert outputs == [{"type": "function_call_output", "call_id": call_id, "output": "aborted"}]
    assert sent["previous_response_id"] == response_id(first)


async def test_orphan_output_is_removed_before_upstream(
    sim: SimProcess, gateway: GatewayProcess
) -> None:
    ws = await open_ws(gateway.ws_url, auth_headers())
    try:
        first = await turn(ws, create("plain answer"))
        orphan = {"type": "function_call_output", "call_id": "call_bogus", "output": "stale"}
        second = await turn(
            ws,
            create(previous_response_id=response_id(first), items=[orphan, user_message("next")]),
        )
    finally:
        await ws.close()
    assert terminal(second)["type"] == "response.completed"
    raw = _ws_requests(sim.control.log())[-1]["raw"]
    assert "call_bogus" not in raw
    assert "next" in raw


async def test_incremental_output_without_previous_id_gets_it_inferred(
    sim: SimProcess, gateway: GatewayProcess
) -> None:
    ws = await open_ws(gateway.ws_url, auth_headers())
    try:
        first = await turn(ws, create(f"run it {CALL}"))
        call_id = function_calls(first)[0]["call_id"]
        answer = {"type": "function_call_output", "call_id": call_id, "output": "ok"}
        second = await turn(ws, create(items=[answer]))
    finally:
        await ws.close()
    assert terminal(second)["type"] == "response.completed"
    sent = _sent(_ws_requests(sim.control.log())[-1])
    assert sent["previous_response_id"] == response_id(first)
    assert "tool said: ok" in output_text(second)


async def test_previous_response_not_found_once_is_recovered(
    sim: SimProcess, gateway: GatewayProcess
) -> None:
    ws = await open_ws(gateway.ws_url, auth_headers())
    try:
        first = await turn(ws, create("remember the number 7"))
        sim.control.add_fault(kind="previous_response_not_found", times=1)
        second = await turn(
            ws,
            create(previous_response_id=response_id(first), items=[user_message("which number?")]),
        )
    finally:
        await ws.close()
    assert [e["type"] for e in second if e["type"] == "error"] == []
    assert terminal(second)["type"] == "response.completed"
    replay = _sent(_ws_requests(sim.control.log())[-1])
    assert "previous_response_id" not in replay
    text = json.dumps(replay["input"])
    assert "remember the number 7" in text and "which number?" in text


async def test_tool_output_missing_once_is_replayed_without_previous_id(
    sim: SimProcess, gateway: GatewayProcess
) -> None:
    ws = await open_ws(gateway.ws_url, auth_headers())
    try:
        first = await turn(ws, create(f"run it {CALL}"))
        call_id = function_calls(first)[0]["call_id"]
        sim.control.add_fault(kind="tool_output_missing", times=1)
        answer = {"type": "function_call_output", "call_id": call_id, "output": "ok"}
        second = await turn(ws, create(previous_response_id=response_id(first), items=[answer]))
    finally:
        await ws.close()
    assert all(e["type"] != "error" for e in second)
    assert terminal(second)["type"] == "response.completed"
    replay = _sent(_ws_requests(sim.control.log())[-1])
    assert "previous_response_id" not in replay
    kinds = [i.get("type") for i in replay["input"]]
    assert "function_call" in kinds and "function_call_output" in kinds


@pytest.fixture
def isolated_gateway(sim: SimProcess) -> Iterator[GatewayProcess]:
    """A gateway of its own: a policy failure puts the account in HTTP cooldown."""
    with run_gateway(gateway_config(sim.base_url)) as gw:
        yield gw


async def test_policy_close_falls_back_to_http_after_one_attempt(
    sim: SimProcess, isolated_gateway: GatewayProcess
) -> None:
    sim.control.add_fault(kind="close_after_events", after_events=0, code=1008, times=1)
    ws = await open_ws(isolated_gateway.ws_url, auth_headers())
    try:
        events = await turn(ws, create("policy please"))
    finally:
        await ws.close()
    assert terminal(events)["type"] == "response.completed"
    log = sim.control.log()
    assert len([r for r in log["requests"] if r["transport"] == "ws"]) == 1
    assert len([r for r in log["requests"] if r["transport"] == "http"]) == 1
    # The cooldown keeps the account on HTTP for the next turn (no WebSocket retry storm).
    ws = await open_ws(isolated_gateway.ws_url, auth_headers())
    try:
        assert terminal(await turn(ws, create("still cooling")))["type"] == "response.completed"
    finally:
        await ws.close()
    transports = [r["transport"] for r in sim.control.log()["requests"]]
    assert transports == ["ws", "http", "http"]


async def test_handshake_5xx_twice_then_completes(sim: SimProcess, gateway: GatewayProcess) -> None:
    sim.control.add_fault(kind="handshake_status", status=503, times=2)
    ws = await open_ws(gateway.ws_url, auth_headers())
    try:
        # Use the second account path too: a fresh gateway socket has nothing pooled on it.
        events = await turn(ws, create("third time lucky"), timeout=20)
    finally:
        await ws.close()
    assert terminal(events)["type"] == "response.completed"
    statuses = [c["handshake_status"] for c in sim.control.log()["connections"]]
    assert statuses.count(503) == 2 and statuses[-1] == 101


@pytest.fixture
def failing_gateway(sim: SimProcess) -> Iterator[GatewayProcess]:
    cfg = gateway_config(
        sim.base_url,
        overrides={"openai_ws": {"retry_total_budget_ms": 1500, "retry_max_attempts": 4}},
    )
    with run_gateway(cfg) as gw:
        yield gw


async def test_fault_on_every_dial_gives_clean_error_within_budget(
    sim: SimProcess, failing_gateway: GatewayProcess
) -> None:
    sim.control.add_fault(kind="handshake_status", status=503, times=1000)
    ws = await open_ws(failing_gateway.ws_url, auth_headers())
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        events = await turn(ws, create("doomed"), timeout=10)
        elapsed = loop.time() - started
        assert terminal(events)["type"] == "error"
        assert terminal(events)["error"]["code"] == "upstream_unavailable"
        assert elapsed < 5  # a correctness bound (nothing hangs), far above the 1.5 s budget
        # The socket stays usable once the upstream is back.
        sim.control.reset()
        assert terminal(await turn(ws, create("recovered")))["type"] == "response.completed"
    finally:
        await ws.close()


async def test_pool_reuse_twenty_sockets_at_most_five_upstream(
    sim: SimProcess, gateway: GatewayProcess
) -> None:
    sem = asyncio.Semaphore(4)

    async def one(i: int) -> str:
        async with sem:
            ws = await open_ws(gateway.ws_url, auth_headers())
            try:
                return str(terminal(await turn(ws, create(f"short {i}")))["type"])
            finally:
                await ws.close()

    outcomes = await asyncio.gather(*(one(i) for i in range(20)))
    assert outcomes == ["response.completed"] * 20
    log = sim.control.log()
    assert len(log["requests"]) == 20
    assert len(log["connections"]) <= 5


async def test_dropped_idle_socket_store_false_replays_full_transcript(
    sim: SimProcess, gateway: GatewayProcess
) -> None:
    ws = await open_ws(gateway.ws_url, auth_headers())
    try:
        first = await turn(ws, create("context: the code word is PAPAYA"))
        dropped = sim.control.drop_connections(idle_only=True)
        assert dropped >= 1
        second = await turn(
            ws,
            create(
                previous_response_id=response_id(first),
                items=[user_message("what was the code word?")],
            ),
        )
    finally:
        await ws.close()
    assert all(e["type"] != "error" for e in second)
    assert terminal(second)["type"] == "response.completed"
    replay = _sent(_ws_requests(sim.control.log())[-1])
    assert "previous_response_id" not in replay
    text = json.dumps(replay["input"])
    assert "PAPAYA" in text and "what was the code word?" in text
    # the first answer's output item is part of the replayed context
    assert any(i.get("type") == "message" and i.get("role") == "assistant" for i in replay["input"])


async def test_client_disconnect_mid_turn_is_drained_and_next_socket_continues(
    sim: SimProcess, gateway: GatewayProcess
) -> None:
    session = {"session-id": unique_prefix("sess")}
    ws = await open_ws(gateway.ws_url, auth_headers(**session))
    await ws.send(create("long one [[sim deltas=100 delay_ms=2]]"))
    created = json.loads(await ws.recv())
    assert created["type"] == "response.created"
    first_id = created["response"]["id"]
    ws.transport.abort()
    await ws.wait_closed()  # abort() only schedules the close on this loop
    sim.control.wait_for(
        lambda log: any(r["outcome"] == "completed" for r in log["requests"]), timeout=20
    )

    ws2 = await open_ws(gateway.ws_url, auth_headers(**session))
    try:
        second = await turn(
            ws2, create(previous_response_id=first_id, items=[user_message("continue")])
        )
    finally:
        await ws2.close()
    assert terminal(second)["type"] == "response.completed"
    reqs = _ws_requests(sim.control.log())
    assert reqs[-1]["conn_id"] == reqs[0]["conn_id"]
    assert _sent(reqs[-1])["previous_response_id"] == first_id


async def test_warmup_then_chained_request(sim: SimProcess, gateway: GatewayProcess) -> None:
    ws = await open_ws(gateway.ws_url, auth_headers())
    try:
        warm = await turn(
            ws,
            create(
                items=[{"type": "message", "role": "developer", "content": "be brief"}],
                generate=False,
            ),
        )
        assert terminal(warm)["type"] == "response.completed"
        chained = await turn(
            ws, create(previous_response_id=response_id(warm), items=[user_message("hello")])
        )
    finally:
        await ws.close()
    assert terminal(chained)["type"] == "response.completed"
    log = sim.control.log()
    warm_req, chained_req = log["requests"][-2:]
    assert warm_req["generate"] is False and warm_req["transport"] == "ws"
    assert chained_req["conn_id"] == warm_req["conn_id"]  # chained on the warm socket
    assert _sent(chained_req)["previous_response_id"] == response_id(warm)


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.stop()


async def test_second_instance_continues_with_same_account_and_pending_call(
    sim: SimProcess, redis: RedisServer
) -> None:
    prefix = unique_prefix("x")
    configs = [
        gateway_config(
            sim.base_url,
            accounts=2,
            statestore_url=redis.url,
            instance_id=f"gw-{i}",
            overrides={"statestore": {"url": redis.url, "key_prefix": prefix}},
        )
        for i in (1, 2)
    ]
    # Instance 2 lists the accounts the other way round: without the Redis binding its
    # least-loaded pick would be the other account, so the test proves the lookup.
    accounts = configs[1]["accounts"]
    assert isinstance(accounts, list)
    configs[1]["accounts"] = list(reversed(accounts))
    with run_gateway(configs[0]) as gw1, run_gateway(configs[1]) as gw2:
        ws1 = await open_ws(gw1.ws_url, auth_headers())
        try:
            first = await turn(ws1, create(f"run it {CALL}", store=True))
        finally:
            await ws1.close()
        call_id = function_calls(first)[0]["call_id"]
        ws2 = await open_ws(gw2.ws_url, auth_headers())
        try:
            second = await turn(
                ws2,
                create(
                    previous_response_id=response_id(first),
                    items=[user_message("skip it")],
                    store=True,
                ),
            )
        finally:
            await ws2.close()
    assert terminal(second)["type"] == "response.completed"
    log = sim.control.log()
    reqs = [r for r in log["requests"] if r["transport"] == "ws"]
    assert reqs[0]["account_key"] == reqs[-1]["account_key"]
    sent = _sent(reqs[-1])
    assert {"type": "function_call_output", "call_id": call_id, "output": "aborted"} in sent[
        "input"
    ]


@pytest.fixture
def impatient_gateway(sim: SimProcess) -> Iterator[GatewayProcess]:
    """A short read timeout so a silent (half-open) upstream is detected quickly."""
    with run_gateway(
        gateway_config(sim.base_url, overrides={"openai_ws": {"read_timeout_s": 1.0}})
    ) as gw:
        yield gw


async def test_error_event_mid_stream_reaches_client_and_socket_stays_usable(
    sim: SimProcess, gateway: GatewayProcess
) -> None:
    sim.control.add_fault(
        kind="error_event", after_events=3, status=500, code="server_error", message="boom"
    )
    ws = await open_ws(gateway.ws_url, auth_headers())
    try:
        events = await turn(ws, create("will break [[sim deltas=10]]"))
        # Events already reached the client: no silent retry, the upstream's error is relayed.
        assert [e["type"] for e in events][:3] == [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
        ]
        assert (
            terminal(events)["type"] == "error"
            and terminal(events)["error"]["code"] == "server_error"
        )
        assert terminal(await turn(ws, create("next one")))["type"] == "response.completed"
    finally:
        await ws.close()


async def test_silent_upstream_is_cut_off_and_socket_stays_usable(
    sim: SimProcess, impatient_gateway: GatewayProcess
) -> None:
    sim.control.add_fault(kind="silence", after_events=2)
    ws = await open_ws(impatient_gateway.ws_url, auth_headers())
    try:
        events = await turn(ws, create("half-open"), timeout=15)
        assert terminal(events)["type"] == "error"
        assert terminal(events)["error"]["code"] == "upstream_stream_interrupted"
        assert (
            terminal(await turn(ws, create("fresh socket please")))["type"] == "response.completed"
        )
    finally:
        await ws.close()
    conns = {r["conn_id"] for r in sim.control.log()["requests"]}
    assert len(conns) == 2  # the silent socket was retired, not reused


async def test_connection_age_limit_is_retried_on_a_new_socket(
    sim: SimProcess, gateway: GatewayProcess
) -> None:
    ws = await open_ws(gateway.ws_url, auth_headers())
    try:
        assert terminal(await turn(ws, create("first")))["type"] == "response.completed"
        sim.control.add_fault(kind="max_conn_age_s", age_s=0.5)
        # Let the pooled socket outlive the (scaled-down) 60-minute cap; a fresh one is younger.
        await asyncio.sleep(0.6)
        events = await turn(ws, create("second"))
    finally:
        await ws.close()
    log = sim.control.log()
    outcomes = [r["outcome"] for r in log["requests"]]
    assert "error:websocket_connection_limit_reached" in outcomes
    assert terminal(events)["type"] == "response.completed"
    assert all(e["type"] != "error" for e in events)


async def test_first_byte_delay_still_completes(sim: SimProcess, gateway: GatewayProcess) -> None:
    sim.control.add_fault(kind="first_byte_delay_ms", delay_ms=300)
    ws = await open_ws(gateway.ws_url, auth_headers())
    try:
        events = await turn(ws, create("slow start"))
    finally:
        await ws.close()
    assert terminal(events)["type"] == "response.completed"
    assert sim.control.log()["requests"][-1]["outcome"] == "completed"
