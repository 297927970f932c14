"""gateway.ingress: events written to the client socket as one text frame.

Most tests drive uvicorn's real websockets-sansio protocol over a recording transport
and parse what it wrote with a websockets client protocol, so the frames the direct
writer produces are compared byte for byte with the protocol's own ASGI send. The last
tests run a real uvicorn server per WebSocket implementation.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState
from websockets.asyncio.client import connect
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

from gateway.guard import HandshakeGate, install_ingress_guard
from gateway.ingress import GATHER_ABOVE, TEXT_FRAMES, text_frame_header, text_frame_writer
from gateway.session import ClientSink
from tests.support import eventually, free_port

# Every length encoding and both sides of each boundary; the gather threshold too.
SIZES = [0, 1, 125, 126, 127, GATHER_ABOVE, GATHER_ABOVE + 1, 65535, 65536, 70_000]


@pytest.fixture(autouse=True, scope="module")
def _offered() -> None:
    install_ingress_guard(HandshakeGate(timeout_s=5.0, max_pending=100, max_header_bytes=16384))


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.chunks: list[bytes] = []
        self.closing = False

    def write(self, data: Any) -> None:
        self.chunks.append(bytes(data))

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def take(self) -> bytes:
        out = b"".join(self.chunks)
        self.chunks.clear()
        return out


class Rig:
    """One accepted socket: the server protocol, its app's sink, a parsing client."""

    def __init__(self, deflate: bool) -> None:
        self.transport = RecordingTransport()
        self.client = ClientProtocol(
            parse_uri("ws://gateway.test/v1/responses"),
            extensions=[ClientPerMessageDeflateFactory()] if deflate else None,
        )
        self.accepted = asyncio.Event()
        self.finish = asyncio.Event()
        self.sink: ClientSink | None = None
        config = uvicorn.Config(
            self.app,
            ws="websockets-sansio",
            ws_per_message_deflate=deflate,
            interface="asgi3",
            log_config=None,
        )
        self.proto: Any = WebSocketsSansIOProtocol(config, ServerState(), app_state={})

    async def app(self, scope: Any, receive: Any, send: Any) -> None:
        websocket = WebSocket(scope, receive, send)
        await websocket.accept()
        self.sink = ClientSink(websocket)
        self.accepted.set()
        await self.finish.wait()

    async def open(self) -> ClientSink:
        self.proto.connection_made(self.transport)
        request = self.client.connect()
        self.client.send_request(request)
        self.proto.data_received(b"".join(self.client.data_to_send()))
        await asyncio.wait_for(self.accepted.wait(), 5.0)
        self.client.receive_data(self.transport.take())
        [response] = self.client.events_received()
        assert isinstance(response, Response) and response.status_code == 101
        assert self.sink is not None
        return self.sink

    def frames(self) -> list[Frame]:
        self.client.receive_data(self.transport.take())
        return [e for e in self.client.events_received() if isinstance(e, Frame)]

    async def asgi_bytes(self, text: str) -> bytes:
        """What the protocol's own ASGI send writes for ``text``."""
        await self.proto.send({"type": "websocket.send", "text": text})
        return self.transport.take()


@asynccontextmanager
async def accepted(deflate: bool = False) -> AsyncIterator[tuple[Rig, ClientSink]]:
    rig = Rig(deflate)
    sink = await rig.open()
    try:
        yield rig, sink
    finally:
        rig.finish.set()
        if not rig.proto.disconnected:
            rig.proto.connection_lost(None)


async def spin() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


@pytest.mark.parametrize("size", SIZES)
async def test_frames_are_byte_identical_to_the_asgi_path(size: int) -> None:
    async with accepted() as (rig, sink):
        assert sink._direct is not None
        for text in ("a" * size, ("\u00e9\u6f22" * size)[:size]):
            for payload in (text, text.encode()):
                assert await sink.send(payload)
                direct = rig.transport.take()
                assert direct == await rig.asgi_bytes(text)
                assert direct.startswith(text_frame_header(len(text.encode())))


async def test_a_client_parses_every_frame_whole() -> None:
    async with accepted() as (rig, sink):
        payloads = [("x" * size).encode() for size in SIZES]
        for payload in payloads:
            assert await sink.send(payload)
        frames = rig.frames()
        assert [(f.opcode, f.fin, f.data) for f in frames] == [
            (Opcode.TEXT, True, p) for p in payloads
        ]


async def test_nothing_is_written_after_the_close_was_sent() -> None:
    async with accepted() as (rig, sink):
        writer = sink._direct
        assert writer is not None
        await sink.close(1001, "idle timeout")  # through the ASGI path
        [close] = rig.frames()
        assert close.opcode is Opcode.CLOSE
        assert rig.client.close_rcvd is not None and rig.client.close_rcvd.code == 1001
        assert not await sink.send("late")
        assert not writer.write("late")
        assert rig.transport.take() == b""


async def test_a_client_close_makes_the_sink_gone() -> None:
    async with accepted() as (rig, sink):
        rig.client.send_close(1000, "bye")
        rig.proto.data_received(b"".join(rig.client.data_to_send()))
        assert rig.proto.conn.state is not State.OPEN
        rig.transport.take()  # the protocol's close reply
        assert not await sink.send("late")
        assert sink.gone
        assert rig.transport.take() == b""


async def test_a_disconnect_makes_the_sink_gone() -> None:
    async with accepted() as (rig, sink):
        rig.proto.connection_lost(ConnectionResetError())
        assert not await sink.send("late")
        assert sink.gone and rig.transport.take() == b""


async def test_a_closing_transport_takes_no_frame() -> None:
    async with accepted() as (rig, sink):
        rig.transport.closing = True
        assert not await sink.send("late")
        assert sink.gone and rig.transport.take() == b""


async def test_a_paused_transport_holds_the_send_until_it_resumes() -> None:
    async with accepted() as (rig, sink):
        rig.proto.pause_writing()
        sending = asyncio.create_task(sink.send("held"))
        await spin()
        assert not sending.done() and rig.transport.take() == b""
        rig.proto.resume_writing()
        assert await sending
        assert [f.data for f in rig.frames()] == [b"held"]


async def test_a_disconnect_while_paused_releases_the_send_as_gone() -> None:
    async with accepted() as (rig, sink):
        rig.proto.pause_writing()
        sending = asyncio.create_task(sink.send("held"))
        await spin()
        rig.proto.connection_lost(None)
        assert not await sending
        assert sink.gone and rig.transport.take() == b""


async def test_send_nowait_writes_at_once_or_says_to_await() -> None:
    async with accepted() as (rig, sink):
        assert sink.send_nowait("now") is True
        assert [f.data for f in rig.frames()] == [b"now"]
        rig.proto.pause_writing()
        assert sink.send_nowait("held") is None  # paused: the caller awaits send
        assert rig.transport.take() == b""
        rig.proto.resume_writing()
        rig.proto.connection_lost(None)
        assert sink.send_nowait("late") is False and sink.gone


async def test_send_nowait_defers_to_send_without_a_direct_writer() -> None:
    async with accepted(deflate=True) as (_rig, sink):
        assert sink._direct is None
        assert sink.send_nowait("x") is None
        assert await sink.send("x")


async def test_a_compressed_socket_keeps_the_asgi_path() -> None:
    async with accepted(deflate=True) as (rig, sink):
        assert rig.proto.conn.extensions  # permessage-deflate was negotiated
        assert sink._direct is None
        assert await sink.send(b'{"type":"a"}')
        [frame] = rig.frames()
        assert frame.opcode is Opcode.TEXT and frame.data == b'{"type":"a"}'


def test_no_writer_where_none_is_offered_or_ready() -> None:
    assert text_frame_writer({"type": "websocket"}) is None
    assert text_frame_writer({"extensions": {"websocket.http.response": {}}}) is None
    assert text_frame_writer({"extensions": {TEXT_FRAMES: object()}}) is None


async def test_a_writer_is_not_ready_before_the_handshake_is_accepted() -> None:
    rig = Rig(deflate=False)
    seen: list[object] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(text_frame_writer(scope))
        seen.append(scope["extensions"].get(TEXT_FRAMES))
        await send({"type": "websocket.close", "code": 1008})

    rig.proto.app = app
    rig.proto.connection_made(rig.transport)
    rig.client.send_request(rig.client.connect())
    rig.proto.data_received(b"".join(rig.client.data_to_send()))
    await eventually(lambda: len(seen) == 2, what="the app to look for a writer")
    assert seen[0] is None and seen[1] is not None  # offered, but not usable yet
    rig.proto.connection_lost(None)


# -- real servers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ws_impl",
    [
        "websockets-sansio",
        "wsproto",
        pytest.param("websockets", marks=pytest.mark.filterwarnings("ignore::Warning")),
    ],
)
async def test_a_real_server_relays_every_size_and_closes(ws_impl: str) -> None:
    payloads = [("y" * size) for size in SIZES] + ["\u00e9\u6f22 non-ASCII"]
    direct: list[bool] = []

    async def endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        sink = ClientSink(websocket)
        direct.append(sink._direct is not None)
        for i, payload in enumerate(payloads):
            assert await sink.send(payload if i % 2 else payload.encode())
        await sink.close(1000, "done")

    app = Starlette(routes=[WebSocketRoute("/ws", endpoint)])
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            ws=ws_impl,
            ws_per_message_deflate=False,  # as the gateway's server runs
            log_config=None,
        )
    )
    task = asyncio.create_task(server.serve())
    await eventually(lambda: server.started or task.done(), what="the server to start")
    try:
        received: list[str] = []
        async with connect(f"ws://127.0.0.1:{port}/ws", max_size=None) as ws:
            try:
                while True:
                    message = await asyncio.wait_for(ws.recv(), 5.0)
                    assert isinstance(message, str)
                    received.append(message)
            except ConnectionClosed:
                pass
            assert ws.close_code == 1000
        assert received == payloads
        assert direct == [ws_impl == "websockets-sansio"]
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10.0)
