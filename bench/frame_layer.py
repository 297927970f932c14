"""The upstream client's frame layer alone: client CPU per received text frame.

    .venv/bin/python -m bench.frame_layer [--frames 50000] [--size 400] [--json]

A server process (pinned to CPU 1) writes pre-encoded ~400 B text frames as fast as the
socket takes them; each client variant (this process, pinned to CPU 0) receives them all
through a ``recv()`` coroutine, the way the relay consumes them, and the figure is this
process's CPU time over the frames. Then the parsers alone, fed the same frames from
memory. Variants: wsproto over a StreamReader (the old client) or an asyncio.Protocol;
websockets' sans-I/O ``ClientProtocol`` over either; the websockets asyncio client;
picows (Cython); and the gateway's current ``gateway.upstream.ws.connect``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import multiprocessing as mp
import os
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bench.load import pin

Recv = Callable[[], Awaitable[Any]]
READ_CHUNK = 256 * 1024


def server_frame(size: int) -> bytes:
    payload = b'{"type":"response.output_text.delta","delta":"' + b"x" * max(0, size - 48) + b'"}'
    n = len(payload)
    head = bytes([0x81, n]) if n < 126 else bytes([0x81, 126]) + struct.pack("!H", n)
    return head + payload


# -- the server: a websockets server that blasts pre-encoded frames on request ----------


def _serve(port: int, ready: Any) -> None:
    pin(0, 1)
    import logging

    import uvloop
    from websockets.asyncio.server import ServerConnection, serve

    async def handler(ws: ServerConnection) -> None:
        async for message in ws:
            count, size = (int(x) for x in str(message).split())
            frame = server_frame(size)
            batch = frame * 500
            transport = ws.transport
            sent = 0
            while sent < count:
                n = min(500, count - sent)
                transport.write(batch if n == 500 else frame * n)
                sent += n
                # a raw transport has no drain(): poll its buffer down
                while transport.get_write_buffer_size() > 1 << 20:  # noqa: ASYNC110
                    await asyncio.sleep(0.0005)

    logging.getLogger("websockets").setLevel(logging.CRITICAL)  # clients leave abruptly

    async def main() -> None:
        async with serve(handler, "127.0.0.1", port, max_size=None, compression=None):
            ready.set()
            await asyncio.Future()

    uvloop.run(main())


# -- client variants: each returns (recv, send_text, close) on a connected socket ----------


class _Inbox:
    """Messages handed from data_received to a recv() coroutine via one future."""

    def __init__(self) -> None:
        self.pending: collections.deque[Any] = collections.deque()
        self.waiter: asyncio.Future[None] | None = None

    def put(self, message: Any) -> None:
        self.pending.append(message)
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def recv(self) -> Any:
        if not self.pending:
            self.waiter = asyncio.get_running_loop().create_future()
            await self.waiter
            self.waiter = None
        return self.pending.popleft()


async def wsproto_stream(url: str) -> tuple[Recv, Callable[[str], None]]:
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection, Request, TextMessage

    host, port = _hostport(url)
    reader, writer = await asyncio.open_connection(host, port, limit=READ_CHUNK)
    ws = WSConnection(ConnectionType.CLIENT)
    writer.write(ws.send(Request(host=f"{host}:{port}", target="/")))
    pending: collections.deque[Any] = collections.deque()
    while True:
        ws.receive_data(await reader.read(READ_CHUNK))
        if any(isinstance(e, AcceptConnection) for e in ws.events()):
            break

    async def recv() -> Any:
        while not pending:
            ws.receive_data(await reader.read(READ_CHUNK))
            for event in ws.events():
                if isinstance(event, TextMessage):
                    pending.append(event.data)
        return pending.popleft()

    return recv, lambda text: writer.write(ws.send(TextMessage(data=text)))


async def wsproto_protocol(url: str) -> tuple[Recv, Callable[[str], None]]:
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection, Request, TextMessage

    host, port = _hostport(url)
    ws = WSConnection(ConnectionType.CLIENT)
    inbox = _Inbox()
    opened = asyncio.get_running_loop().create_future()

    class Proto(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, TextMessage):
                    inbox.put(event.data)
                elif isinstance(event, AcceptConnection):
                    opened.set_result(None)

    transport, _ = await asyncio.get_running_loop().create_connection(Proto, host, port)
    transport.write(ws.send(Request(host=f"{host}:{port}", target="/")))
    await opened
    return inbox.recv, lambda text: transport.write(ws.send(TextMessage(data=text)))


def _sansio(url: str) -> Any:
    from websockets.client import ClientProtocol
    from websockets.uri import parse_uri

    proto = ClientProtocol(parse_uri(url), max_size=None)
    proto.send_request(proto.connect())
    return proto


def _sansio_frames(proto: Any, put: Callable[[Any], None]) -> bool:
    """Feed events to ``put``; True once the handshake response arrived."""
    from websockets.frames import Frame, Opcode

    opened = False
    for event in proto.events_received():
        if isinstance(event, Frame):
            if event.opcode is Opcode.TEXT:
                put(event.data.decode())
        else:
            opened = True
    return opened


async def sansio_stream(url: str) -> tuple[Recv, Callable[[str], None]]:
    host, port = _hostport(url)
    reader, writer = await asyncio.open_connection(host, port, limit=READ_CHUNK)
    proto = _sansio(url)
    writer.writelines(proto.data_to_send())
    pending: collections.deque[Any] = collections.deque()
    while True:
        proto.receive_data(await reader.read(READ_CHUNK))
        if _sansio_frames(proto, pending.append):
            break

    async def recv() -> Any:
        while not pending:
            proto.receive_data(await reader.read(READ_CHUNK))
            _sansio_frames(proto, pending.append)
        return pending.popleft()

    def send(text: str) -> None:
        proto.send_text(text.encode())
        writer.writelines(proto.data_to_send())

    return recv, send


async def sansio_protocol(url: str) -> tuple[Recv, Callable[[str], None]]:
    host, port = _hostport(url)
    proto = _sansio(url)
    inbox = _Inbox()
    opened = asyncio.get_running_loop().create_future()

    class Proto(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:
            proto.receive_data(data)
            if _sansio_frames(proto, inbox.put) and not opened.done():
                opened.set_result(None)

    transport, _ = await asyncio.get_running_loop().create_connection(Proto, host, port)
    transport.writelines(proto.data_to_send())
    await opened

    def send(text: str) -> None:
        proto.send_text(text.encode())
        transport.writelines(proto.data_to_send())

    return inbox.recv, send


async def websockets_asyncio(url: str) -> tuple[Recv, Callable[[str], None]]:
    from websockets.asyncio.client import connect

    ws = await connect(url, max_size=None, compression=None, ping_interval=None)
    loop = asyncio.get_running_loop()
    return ws.recv, lambda text: loop.create_task(ws.send(text)) and None


async def picows_client(url: str, fastnet: bool = True) -> tuple[Recv, Callable[[str], None]]:
    from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

    inbox = _Inbox()

    class Listener(WSListener):  # type: ignore[misc]
        def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
            if frame.msg_type == WSMsgType.TEXT:
                inbox.put(frame.get_payload_as_utf8_text())

    transport, _ = await ws_connect(Listener, url, max_frame_size=1 << 24, use_aiofastnet=fastnet)
    return inbox.recv, lambda text: transport.send(WSMsgType.TEXT, text.encode())


async def gateway_client(url: str) -> tuple[Recv, Callable[[str], None]]:
    from gateway.upstream.ws import connect

    conn = await connect(url, [], conn_id="bench", max_message_bytes=1 << 24, timeout=10)
    loop = asyncio.get_running_loop()

    async def recv() -> Any:
        return await conn.recv(timeout=60)

    return recv, lambda text: loop.create_task(conn.send_text(text)) and None


CLIENTS: dict[str, Callable[[str], Awaitable[tuple[Recv, Callable[[str], None]]]]] = {
    "wsproto + StreamReader": wsproto_stream,
    "wsproto + Protocol": wsproto_protocol,
    "websockets sans-I/O + StreamReader": sansio_stream,
    "websockets sans-I/O + Protocol": sansio_protocol,
    "websockets asyncio client": websockets_asyncio,
    "picows (aiofastnet transport, its default)": picows_client,
    "picows (the loop's own transport)": lambda url: picows_client(url, fastnet=False),
    "gateway.upstream.ws (this checkout)": gateway_client,
}


def _hostport(url: str) -> tuple[str, int]:
    hostport = url.split("//", 1)[1].split("/", 1)[0]
    host, _, port = hostport.partition(":")
    return host, int(port)


async def _measure(name: str, url: str, frames: int, size: int) -> float:
    recv, send = await CLIENTS[name](url)
    send(f"{frames // 10} {size}")  # warm-up batch
    for _ in range(frames // 10):
        await recv()
    cpu = time.process_time()
    send(f"{frames} {size}")
    for _ in range(frames):
        await recv()
    return (time.process_time() - cpu) / frames * 1e6


def parsers(frames: int, size: int) -> dict[str, float]:
    """Each parser fed the same frames from memory, in 64 KB chunks (no socket at all)."""
    from websockets.frames import Frame
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection, Request

    data = server_frame(size) * frames
    chunks = [data[i : i + 65536] for i in range(0, len(data), 65536)]
    out: dict[str, float] = {}

    # A handshake against wsproto's own server side brings the client to OPEN.
    client = WSConnection(ConnectionType.CLIENT)
    server = WSConnection(ConnectionType.SERVER)
    server.receive_data(client.send(Request(host="h", target="/")))
    list(server.events())
    client.receive_data(server.send(AcceptConnection()))
    list(client.events())
    cpu = time.process_time()
    count = 0
    for chunk in chunks:
        client.receive_data(chunk)
        count += sum(1 for _ in client.events())
    out["wsproto"] = (time.process_time() - cpu) / frames * 1e6

    proto = _sansio("ws://h/")
    proto.data_to_send()
    handshake = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + _accept_key(proto) + b"\r\n\r\n"
    )
    proto.receive_data(handshake)
    proto.events_received()
    cpu = time.process_time()
    count = 0
    for chunk in chunks:
        proto.receive_data(chunk)
        count += sum(1 for e in proto.events_received() if isinstance(e, Frame))
    out["websockets sans-I/O"] = (time.process_time() - cpu) / frames * 1e6
    return out


def _accept_key(proto: Any) -> bytes:
    from websockets.utils import accept_key

    return accept_key(proto.key).encode()


def run(frames: int = 50_000, size: int = 400) -> dict[str, Any]:
    import uvloop

    from tests.support import free_port

    pin(0, 0)
    port = free_port()
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    server = ctx.Process(target=_serve, args=(port, ready), daemon=True)
    server.start()
    try:
        if not ready.wait(30):
            raise RuntimeError("frame server did not start")
        url = f"ws://127.0.0.1:{port}/"
        results: dict[str, Any] = {"frames": frames, "frame_bytes": len(server_frame(size))}
        clients: dict[str, float | str] = {}
        for name in CLIENTS:
            try:
                clients[name] = uvloop.run(_measure(name, url, frames, size))
            except Exception as exc:  # a missing optional library: report, keep going
                clients[name] = f"failed: {exc!r}"[:200]
        results["client_cpu_us_per_frame"] = clients
        results["parser_cpu_us_per_frame"] = parsers(frames, size)
        return results
    finally:
        server.terminate()
        server.join(5)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.frame_layer")
    parser.add_argument("--frames", type=int, default=50_000)
    parser.add_argument("--size", type=int, default=400)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = run(args.frames, args.size)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{result['frames']} text frames of {result['frame_bytes']} B (pid {os.getpid()})")
    for table in ("client_cpu_us_per_frame", "parser_cpu_us_per_frame"):
        print(table)
        for name, value in result[table].items():
            shown = f"{value:6.2f} µs" if isinstance(value, float) else value
            print(f"  {name:45s} {shown}")


if __name__ == "__main__":
    main()
