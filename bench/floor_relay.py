"""The independent floor: the least a Python relay can do, sharing no code with the gateway.

Starlette + uvicorn + uvloop ingress, the ``websockets`` asyncio client upstream, every
frame copied both ways as it is (text stays text, bytes stay bytes), nothing parsed.
Every ratio in ``docs/benchmarks.md`` is against this process.

    python -m bench.floor_relay --port P --upstream ws://... [--key K]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket
from websockets.asyncio.client import connect


def build(upstream: str, key: str) -> Starlette:
    async def relay(websocket: WebSocket) -> None:
        async with connect(
            upstream,
            additional_headers={"Authorization": f"Bearer {key}"},
            max_size=None,
            compression=None,
            ping_interval=None,
        ) as conn:
            await websocket.accept()
            send = websocket.send

            async def down() -> None:
                with contextlib.suppress(Exception):
                    async for message in conn:
                        field = "text" if isinstance(message, str) else "bytes"
                        await send({"type": "websocket.send", field: message})

            task = asyncio.create_task(down())
            try:
                while True:
                    message = await websocket.receive()
                    if message["type"] == "websocket.disconnect":
                        break
                    text = message.get("text")
                    await conn.send(text if text is not None else message.get("bytes") or b"")
            finally:
                task.cancel()

    return Starlette(routes=[WebSocketRoute("/v1/responses", relay)])


def uvicorn_kwargs() -> dict[str, Any]:
    """The ingress settings the gateway runs with, so only the relay logic differs."""
    return {
        "host": "127.0.0.1",
        "loop": "uvloop",
        "http": "httptools",
        "ws": "websockets-sansio",
        "ws_max_size": 16 * 1024 * 1024,
        "ws_per_message_deflate": False,
        "ws_ping_interval": None,
        "ws_ping_timeout": None,
        "log_level": "warning",
        "access_log": False,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.floor_relay")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--key", default="sk-sim-a")
    args = parser.parse_args()
    uvicorn.run(build(args.upstream, args.key), port=args.port, **uvicorn_kwargs())


if __name__ == "__main__":
    main()
