"""The upstream WebSocket client against a real `websockets` server: ws, wss, HTTP
CONNECT proxy, handshake refusal, the read limit, close codes, ping while reading."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Response

from gateway.upstream.ws import DialError, HandshakeRejected, MessageTooBig, UpstreamClosed, connect
from tests.support import eventually


async def echo(ws: ServerConnection) -> None:
    async for message in ws:
        if message == "close-1011":
            await ws.close(1011, "overloaded")
            return
        if message == "big":
            await ws.send("x" * 5000)
            continue
        await ws.send(f"echo:{message}")


def add_turn_state(connection: ServerConnection, request: Any, response: Response) -> Response:
    response.headers["x-codex-turn-state"] = "ts-1"
    response.headers["x-seen-auth"] = request.headers.get("authorization", "")
    return response


@pytest.fixture
async def server() -> AsyncIterator[int]:
    async with serve(echo, "127.0.0.1", 0, process_response=add_turn_state) as srv:
        yield srv.sockets[0].getsockname()[1]


async def test_round_trip_headers_and_limit(server: int) -> None:
    conn = await connect(
        f"ws://127.0.0.1:{server}/v1/responses",
        [("authorization", "Bearer k")],
        conn_id="c1",
        max_message_bytes=1000,
        timeout=5,
    )
    assert conn.response_headers["x-codex-turn-state"] == "ts-1"
    assert conn.response_headers["x-seen-auth"] == "Bearer k"
    await conn.send_text("hi")
    assert await conn.recv(timeout=5) == "echo:hi"
    await conn.ping(timeout=5)  # idle: ping reads its own pong
    reader = asyncio.create_task(conn.recv(timeout=5))
    await eventually(lambda: conn._st.reading, what="the reader to block in recv")
    await conn.ping(timeout=5)  # while another task is blocked reading: no shared lock
    await conn.send_text("after-ping")
    assert await reader == "echo:after-ping"
    await conn.send_text("big")
    with pytest.raises(MessageTooBig):
        await conn.recv(timeout=5)
    assert conn.closed


async def test_close_code_and_send_after_close(server: int) -> None:
    conn = await connect(
        f"ws://127.0.0.1:{server}/", [], conn_id="c2", max_message_bytes=1 << 20, timeout=5
    )
    await conn.send_text("close-1011")
    with pytest.raises(UpstreamClosed) as closed:
        await conn.recv(timeout=5)
    assert closed.value.code == 1011 and conn.closed
    with pytest.raises(UpstreamClosed):
        await conn.send_text("late")


async def test_idle_watcher_notices_a_close(server: int) -> None:
    conn = await connect(
        f"ws://127.0.0.1:{server}/", [], conn_id="c3", max_message_bytes=1 << 20, timeout=5
    )
    await conn.send_text("close-1011")
    conn.watch_idle()
    await eventually(lambda: conn.closed, what="the idle watcher to see the close")
    assert conn.close_info is not None and conn.close_info.code == 1011


async def test_handshake_refusal_and_dial_errors() -> None:
    def refuse(connection: ServerConnection, request: Any) -> Response:
        return connection.respond(429, "slow down\n")

    async with serve(echo, "127.0.0.1", 0, process_request=refuse) as srv:
        port = srv.sockets[0].getsockname()[1]
        with pytest.raises(HandshakeRejected) as refused:
            await connect(
                f"ws://127.0.0.1:{port}/", [], conn_id="c4", max_message_bytes=1024, timeout=5
            )
    assert refused.value.status == 429 and b"slow down" in refused.value.body
    with pytest.raises(DialError):
        await connect(
            f"ws://127.0.0.1:{port}/", [], conn_id="c5", max_message_bytes=1024, timeout=5
        )


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def connect_proxy(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, tunnels: list[str]
) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    target = head.split()[1].decode()
    tunnels.append(target)
    host, port = target.rsplit(":", 1)
    up_reader, up_writer = await asyncio.open_connection(host, int(port))
    writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
    await writer.drain()

    async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        finally:
            dst.close()

    await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer), return_exceptions=True)


async def test_wss_through_an_http_connect_proxy(tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))
    tunnels: list[str] = []
    proxy = await asyncio.start_server(lambda r, w: connect_proxy(r, w, tunnels), "127.0.0.1", 0)
    proxy_port = proxy.sockets[0].getsockname()[1]
    async with serve(echo, "127.0.0.1", 0, ssl=server_ctx) as srv:
        port = srv.sockets[0].getsockname()[1]
        direct = await connect(
            f"wss://localhost:{port}/v1/responses",
            [],
            conn_id="t1",
            max_message_bytes=1 << 20,
            timeout=5,
            ssl_context=client_ctx,
        )
        await direct.send_text("tls")
        assert await direct.recv(timeout=5) == "echo:tls"
        await direct.aclose()
        via = await connect(
            f"wss://localhost:{port}/v1/responses",
            [],
            conn_id="t2",
            max_message_bytes=1 << 20,
            timeout=5,
            ssl_context=client_ctx,
            proxy_url=f"http://127.0.0.1:{proxy_port}",
        )
        await via.send_text("proxied")
        assert await via.recv(timeout=5) == "echo:proxied"
        await via.aclose()
    proxy.close()
    assert tunnels == [f"localhost:{port}"]


async def test_read_deadline_fires_only_on_a_real_wait(server: int) -> None:
    conn = await connect(
        f"ws://127.0.0.1:{server}/", [], conn_id="c6", max_message_bytes=1 << 20, timeout=5
    )
    for i in range(50):  # many quick reads: the single watchdog timer never cancels one
        await conn.send_text(f"m{i}")
        assert await conn.recv(timeout=0.2) == f"echo:m{i}"
    with pytest.raises(TimeoutError):
        await conn.recv(timeout=0.2)  # nothing was sent: this read really waits
    await conn.send_text("still-alive")
    assert await conn.recv(timeout=5) == "echo:still-alive"  # the socket survives a timeout
    await conn.aclose()
