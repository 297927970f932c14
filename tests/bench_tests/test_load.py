"""The load generator's turn loop on a scripted socket (no network, no timing): frames as
the simulator writes them and as LiteLLM re-serializes them, the tool-loop continuation,
and the fixed schedule of an open-loop scenario."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from bench.load import _turns


class ScriptedSocket:
    """Answers each sent frame with the next scripted list of frames."""

    def __init__(self, turns: list[list[str]]) -> None:
        self.turns = turns
        self.sent: list[dict[str, Any]] = []
        self.pending: list[str] = []

    async def send(self, payload: str) -> None:
        self.sent.append(json.loads(payload))
        self.pending = list(self.turns[len(self.sent) - 1])

    async def recv(self) -> str:
        return self.pending.pop(0)


def out() -> dict[str, Any]:
    return {"lat": [], "ttft": [], "turn": [], "events": 0, "turns": 0, "errors": 0}


def completed(spaced: bool, output: list[dict[str, Any]]) -> str:
    event = {"type": "response.completed", "response": {"id": "resp_1", "output": output}}
    return json.dumps(event) if spaced else json.dumps(event, separators=(",", ":"))


@pytest.mark.parametrize("spaced", [False, True])
async def test_a_tool_loop_continues_whichever_way_the_json_is_spaced(spaced: bool) -> None:
    call = {"type": "function_call", "call_id": "call_1", "name": "exec_command"}
    delta = '{"type":"response.output_text.delta","delta":"x","sim_t_ns":1}'
    ws = ScriptedSocket([[delta, completed(spaced, [call])], [delta, completed(spaced, [])]])
    record = out()
    await _turns(ws, 1, "tool", record, 10)
    assert record["turns"] == 2 and record["events"] == 4 and record["errors"] == 0
    continuation = ws.sent[1]
    assert continuation["previous_response_id"] == "resp_1"
    assert continuation["input"][0]["call_id"] == "call_1"
    assert continuation["input"][0]["output"] == "okxxxxxxxx"


async def test_an_error_frame_ends_the_turn_whichever_way_the_json_is_spaced() -> None:
    ws = ScriptedSocket([['{"type":"error","error":{}}'], ['{"type": "error", "error": {}}']])
    record = out()
    await _turns(ws, 2, "turn", record, 2)
    assert record["errors"] == 2 and record["turns"] == 0


async def test_an_open_loop_socket_keeps_a_fixed_schedule(monkeypatch: pytest.MonkeyPatch) -> None:
    """Turns start at 0, 0.5, 1.0, 1.5 s on an injected clock: a slow turn delays only
    the next start, and the one after is back on the schedule."""
    clock = [100.0]
    waits: list[float] = []

    async def fake_sleep(delay: float) -> None:
        waits.append(delay)
        clock[0] += delay

    class TimedSocket(ScriptedSocket):
        costs = [0.2, 0.7, 0.1, 0.1]  # seconds each turn takes upstream

        async def recv(self) -> str:
            clock[0] += self.costs[len(self.sent) - 1]
            return await super().recv()

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    monkeypatch.setattr(asyncio.get_running_loop(), "time", lambda: clock[0])
    ws = TimedSocket([[completed(False, [])]] * 4)
    record = out()
    await _turns(ws, 4, "turn", record, 2, period_s=0.5)
    assert record["turns"] == 4
    assert waits == pytest.approx([0.3, 0.0, 0.2])


async def test_a_warm_run_bills_only_the_measured_turns(monkeypatch: pytest.MonkeyPatch) -> None:
    """CPU and wall time of a warm run start when every socket has had its warm turn: a
    relay's connection set-up and warm turns are not billed to the measured events."""
    import contextlib

    import websockets.asyncio.client

    from bench import load

    sent = [0]  # the fake relay burns 1 CPU second per request it is sent

    class Socket(ScriptedSocket):
        async def send(self, payload: str) -> None:
            sent[0] += 1
            self.sent.append(json.loads(payload))
            self.pending = ['{"type":"response.output_text.delta","delta":"x","sim_t_ns":1}']
            self.pending.append(completed(False, []))

    @contextlib.asynccontextmanager
    async def connect(*_args: Any, **_kwargs: Any) -> Any:
        yield Socket([])

    monkeypatch.setattr(websockets.asyncio.client, "connect", connect)
    monkeypatch.setattr(load, "cpu_seconds", lambda pid: float(sent[0]))
    scenario = load.Scenario("w", concurrency=3, turns=4, prompt="p", warm=True)
    raw = await load._load("ws://relay.test", {}, scenario, cpu_pids=(4242,))
    assert raw["turns"] == 3 * 4 and raw["events"] == 3 * 4 * 2
    assert raw["cpu_s"] == {"4242": 3 * 4}  # the 3 warm turns are not billed
