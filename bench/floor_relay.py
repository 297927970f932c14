"""The floor: uvicorn + the gateway's own upstream client, copying frames both ways with
no parsing at all. ``python -m bench.floor_relay --port P --upstream ws://... --key K``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from gateway.upstream.ws import UpstreamError, connect


def build(upstream: str, key: str, ws_max: int = 16 * 1024 * 1024) -> Starlette:
    counter = iter(range(1, 1 << 62))

    async def relay(websocket: WebSocket) -> None:
        conn = await connect(
            upstream,
            [("authorization", f"Bearer {key}")],
            conn_id=f"floor-{next(counter)}",
            max_message_bytes=ws_max,
            timeout=10,
        )
        await websocket.accept()
        send = websocket.send

        async def down() -> None:
            with contextlib.suppress(UpstreamError, Exception):
                while True:
                    message = await conn.recv()
                    await send({"type": "websocket.send", "text": message})

        task = asyncio.create_task(down())
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                await conn.send_text(message.get("text") or "")
        finally:
            task.cancel()
            await conn.aclose()

    return Starlette(routes=[WebSocketRoute("/v1/responses", relay)])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--key", default="sk-sim-a")
    parser.add_argument("--ws", default="websockets-sansio")
    args = parser.parse_args()
    uvicorn.run(build(args.upstream, args.key), port=args.port, **uvicorn_kwargs(args.ws))


def uvicorn_kwargs(ws: str = "websockets-sansio") -> dict[str, Any]:
    """The gateway's uvicorn settings (gateway/server.py), so only the relay logic differs."""
    return {
        "host": "127.0.0.1",
        "loop": "uvloop",
        "http": "httptools",
        "ws": ws,
        "ws_max_size": 16 * 1024 * 1024,
        "ws_per_message_deflate": False,
        "ws_ping_interval": None,
        "ws_ping_timeout": None,
        "log_level": "warning",
        "access_log": False,
    }


if __name__ == "__main__":
    main()
