"""A minimal Responses-WebSocket client for e2e tests (the `websockets` library)."""

from __future__ import annotations

import json
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

TERMINAL = {"response.completed", "response.failed", "response.incomplete", "error"}


def user_message(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


def create(
    text: str | None = None, *, items: list[dict[str, Any]] | None = None, **fields: Any
) -> str:
    body: dict[str, Any] = {"type": "response.create", "model": "gpt-test", "store": False}
    body["input"] = items if items is not None else [user_message(text or "hi")]
    body.update(fields)
    return json.dumps(body)


async def open_ws(url: str, headers: dict[str, str], **kw: Any) -> ClientConnection:
    return await connect(
        url, additional_headers=headers, max_size=None, open_timeout=10, ping_interval=None, **kw
    )


async def read_turn(ws: ClientConnection, timeout: float = 30.0) -> list[dict[str, Any]]:
    """Events of one turn, up to and including its terminal event."""
    import asyncio

    events: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while True:
            frame = await ws.recv()
            event = json.loads(frame)
            events.append(event)
            if event.get("type") in TERMINAL:
                return events


async def turn(ws: ClientConnection, payload: str, timeout: float = 30.0) -> list[dict[str, Any]]:
    await ws.send(payload)
    return await read_turn(ws, timeout)


def terminal(events: list[dict[str, Any]]) -> dict[str, Any]:
    return events[-1]


def response_id(events: list[dict[str, Any]]) -> str:
    return str(events[-1]["response"]["id"])


def output_text(events: list[dict[str, Any]]) -> str:
    return "".join(
        e.get("delta", "") for e in events if e.get("type") == "response.output_text.delta"
    )


def function_calls(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = events[-1].get("response", {}).get("output", [])
    return [item for item in out if item.get("type") == "function_call"]
