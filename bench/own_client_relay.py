"""A relay on the gateway's own upstream client: the independent floor's ingress
(bench/floor_relay.py) with ``gateway.upstream.ws`` instead of the websockets client, frames
copied with no parsing. Against the floor it prices the upstream client alone.
``python -m bench.own_client_relay --port P --upstream ws://... --key K``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib

import uvicorn
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from bench.floor_relay import uvicorn_kwargs
from gateway.upstream.ws import UpstreamError, connect


def build(upstream: str, key: str, ws_max: int = 16 * 1024 * 1024) -> Starlette:
    counter = iter(range(1, 1 << 62))

    async def relay(websocket: WebSocket) -> None:
        conn = await connect(
            upstream,
            [("authorization", f"Bearer {key}")],
            conn_id=f"own-client-{next(counter)}",
            max_message_bytes=ws_max,
            timeout=10,
        )
        await websocket.accept()
        send = websocket.send

        async def down() -> None:
            with contextlib.suppress(UpstreamError, Exception):
                while True:
                    message = await conn.recv()
                    key = "text" if isinstance(message, str) else "bytes"
                    await send({"type": "websocket.send", key: message})

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
    args = parser.parse_args()
    uvicorn.run(build(args.upstream, args.key), port=args.port, **uvicorn_kwargs())


if __name__ == "__main__":
    main()
