"""Helpers for the simulator's own tests: a real simulator process and a tiny WS client."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from sim.control import SimControl
from tests.support import ManagedProcess, free_port, python_module

KEY_A = "sk-sim-a"
KEY_B = "sk-sim-b"
TERMINAL = {"response.completed", "response.failed", "response.incomplete", "error"}
CALL = '[[sim call exec_command {"cmd":"echo ok"}]]'

Event = dict[str, Any]


@dataclass
class Sim:
    port: int
    control: SimControl
    proc: ManagedProcess

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/responses"


@contextmanager
def running_sim(*extra: str) -> Iterator[Sim]:
    port = free_port()
    proc = ManagedProcess(
        python_module("sim", "--host", "127.0.0.1", "--port", str(port), *extra)
    ).start(wait_port=port)
    control = SimControl(f"http://127.0.0.1:{port}")
    try:
        yield Sim(port, control, proc)
    finally:
        control.close()
        proc.stop()


def user(text: str) -> Event:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


def frame(text: str | None = None, *, items: list[Event] | None = None, **fields: Any) -> str:
    body: dict[str, Any] = {"type": "response.create", "model": "gpt-test", "store": False}
    body["input"] = items if items is not None else [user(text or "hi")]
    body.update(fields)
    return json.dumps(body)


async def open_ws(
    sim: Sim, key: str = KEY_A, path: str = "/v1/responses", **headers: str
) -> ClientConnection:
    return await connect(
        f"ws://127.0.0.1:{sim.port}{path}",
        additional_headers={"Authorization": f"Bearer {key}", **headers},
        max_size=None,
        ping_interval=None,
        open_timeout=10,
    )


async def read_turn(ws: ClientConnection, timeout: float = 20.0) -> list[Event]:
    events: list[Event] = []
    async with asyncio.timeout(timeout):
        while True:
            event = json.loads(await ws.recv())
            events.append(event)
            if event["type"] in TERMINAL:
                return events


async def turn(ws: ClientConnection, payload: str, timeout: float = 20.0) -> list[Event]:
    await ws.send(payload)
    return await read_turn(ws, timeout)


def types(events: list[Event]) -> list[str]:
    return [e["type"] for e in events]


def response_of(events: list[Event]) -> Event:
    response: Event = events[-1]["response"]
    return response


def text_of(events: list[Event]) -> str:
    return "".join(
        part["text"]
        for item in response_of(events)["output"]
        if item["type"] == "message"
        for part in item["content"]
    )


def calls_of(events: list[Event]) -> list[Event]:
    return [i for i in response_of(events)["output"] if i["type"] == "function_call"]


def output_for(call: Event, output: str = "ok") -> Event:
    return {"type": "function_call_output", "call_id": call["call_id"], "output": output}
