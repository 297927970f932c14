"""gateway.upstream.ws: connect() and UpstreamWS against real in-process WebSocket servers.

A `websockets` server plays the upstream (scripted by the text the client sends); a
small wsproto server is used where a test needs byte-exact control over frame timing
(a pong held back or never sent). Also: wss directly and through an HTTP CONNECT proxy,
the read deadline, idleness in the pool and read back-pressure.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Ping, TextMessage
from wsproto.events import Request as WSRequest

from gateway.upstream import connection
from gateway.upstream.ws import (
    DialError,
    HandshakeRejected,
    MessageTooBig,
    UpstreamClosed,
    UpstreamProtocolError,
    UpstreamWS,
    connect,
    parse_ws_url,
)
from tests.support import eventually, free_port

DEADLINE_S = 5.0


async def wait_until(predicate: Callable[[], bool], what: str) -> None:
    await eventually(predicate, timeout=DEADLINE_S, what=what)


@dataclass
class Upstream:
    """A scripted upstream: what it saw, and how each connection ended on its side."""

    port: int = 0
    request_paths: list[str] = field(default_factory=list)
    request_headers: list[Headers] = field(default_factory=list)
    close_codes: list[int | None] = field(default_factory=list)
    finished: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/responses"

    def record_request(self, connection: ServerConnection, request: Request) -> None:
        self.request_paths.append(request.path)
        self.request_headers.append(request.headers)

    def add_headers(
        self, connection: ServerConnection, request: Request, response: Response
    ) -> Response:
        response.headers["x-codex-turn-state"] = "ts-abc"
        response.headers["openai-model"] = "gpt-5-codex"
        return response

    async def handler(self, ws: ServerConnection) -> None:
        try:
            if ws.request is not None and ws.request.path.endswith("/greet"):
                await ws.send("hello-first")  # may arrive glued to the 101 response
            async for message in ws:
                assert isinstance(message, str)
                cmd, _, arg = message.partition(":")
                if cmd == "big":
                    await ws.send("x" * int(arg))
                elif cmd == "bigutf8":
                    await ws.send("\u00e9" * int(arg))  # two UTF-8 bytes per character
                elif cmd == "frag":
                    await ws.send(arg.split("|"))  # one message, one fragment per part
                elif cmd == "then-close":
                    for part in arg.split(","):
                        await ws.send(part)
                    await ws.close(1011, "internal error")
                elif cmd == "close":
                    await ws.close(int(arg), "bye")
                elif cmd == "drop":
                    ws.transport.abort()  # TCP gone, no close frame
                    return
                elif cmd == "server-ping":
                    pong = await ws.ping(b"up")
                    await asyncio.wait_for(pong, DEADLINE_S)
                    await ws.send("pong-received")
                elif cmd == "bytes":
                    await ws.send(arg.encode())
                else:
                    await ws.send(f"echo:{message}")
        except ConnectionClosed:
            pass
        finally:
            self.close_codes.append(ws.close_code)
            self.finished.set()


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = Upstream()
    async with serve(
        up.handler,
        "127.0.0.1",
        0,
        process_request=up.record_request,
        process_response=up.add_headers,
        ping_interval=None,
    ) as server:
        up.port = server.sockets[0].getsockname()[1]
        yield up


async def open_conn(url: str, max_bytes: int = 1 << 20, **kw: Any) -> UpstreamWS:
    return await connect(
        url, [], conn_id="test", max_message_bytes=max_bytes, timeout=DEADLINE_S, **kw
    )


@pytest.fixture
async def conn(upstream: Upstream) -> AsyncIterator[UpstreamWS]:
    c = await open_conn(upstream.url)
    yield c
    await c.aclose()


# -- handshake --------------------------------------------------------------------------


async def test_handshake_sends_headers_and_captures_response_headers(upstream: Upstream) -> None:
    conn = await connect(
        upstream.url,
        [
            ("authorization", "Bearer sk-upstream"),
            ("openai-beta", "responses_websockets=2026-02-06"),
            ("session-id", "sess-1"),
            ("x-codex-turn-metadata", '{"turn_id":"t1"}'),
        ],
        conn_id="acct-a:1",
        max_message_bytes=1 << 20,
        timeout=DEADLINE_S,
    )
    try:
        assert conn.conn_id == "acct-a:1"
        assert conn.response_headers["x-codex-turn-state"] == "ts-abc"
        assert conn.response_headers["openai-model"] == "gpt-5-codex"
        assert all(name == name.lower() for name in conn.response_headers)
        (headers,) = upstream.request_headers
        assert headers["Authorization"] == "Bearer sk-upstream"
        assert headers["OpenAI-Beta"] == "responses_websockets=2026-02-06"
        assert headers["session-id"] == "sess-1"
        assert headers["x-codex-turn-metadata"] == '{"turn_id":"t1"}'
        assert headers["Host"] == f"127.0.0.1:{upstream.port}"
        assert upstream.request_paths == ["/v1/responses"]
        assert not conn.closed
    finally:
        await conn.aclose()


async def test_query_string_is_kept_in_the_request_target(upstream: Upstream) -> None:
    conn = await open_conn(f"ws://127.0.0.1:{upstream.port}/v1/responses?a=1&b=2")
    await conn.aclose()
    assert upstream.request_paths == ["/v1/responses?a=1&b=2"]


async def test_handshake_rejected_with_status_headers_and_body() -> None:
    def refuse(connection: ServerConnection, request: Request) -> Response:
        response = connection.respond(429, '{"error":{"code":"rate_limit_exceeded"}}')
        response.headers["Retry-After"] = "7"
        return response

    async def never(ws: ServerConnection) -> None:
        raise AssertionError("handler must not run")

    async with serve(never, "127.0.0.1", 0, process_request=refuse) as server:
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(HandshakeRejected) as refused:
            await open_conn(f"ws://127.0.0.1:{port}/v1/responses")
    assert refused.value.status == 429
    assert refused.value.body == b'{"error":{"code":"rate_limit_exceeded"}}'
    assert refused.value.headers["retry-after"] == "7"


async def test_handshake_rejected_without_body() -> None:
    def refuse(connection: ServerConnection, request: Request) -> Response:
        return Response(503, "Service Unavailable", Headers([("Content-Length", "0")]), b"")

    async def never(ws: ServerConnection) -> None:
        raise AssertionError("handler must not run")

    async with serve(never, "127.0.0.1", 0, process_request=refuse) as server:
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(HandshakeRejected) as refused:
            await open_conn(f"ws://127.0.0.1:{port}/")
    assert refused.value.status == 503 and refused.value.body == b""


async def test_connect_to_a_closed_port_is_a_dial_error() -> None:
    port = free_port()  # bound and released: nothing listens there now
    with pytest.raises(DialError):
        await open_conn(f"ws://127.0.0.1:{port}/v1/responses")


async def test_handshake_that_never_answers_is_a_dial_error_after_the_timeout() -> None:
    release = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await release.wait()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(DialError, match="timed out"):
            await connect(
                f"ws://127.0.0.1:{port}/", [], conn_id="t", max_message_bytes=1024, timeout=0.2
            )
    finally:
        release.set()
        server.close()
        await server.wait_closed()


async def test_plain_http_answer_is_a_dial_error() -> None:
    async def not_ws(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"garbage that is not HTTP\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(not_ws, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(DialError):
            await open_conn(f"ws://127.0.0.1:{port}/")
    finally:
        server.close()
        await server.wait_closed()


def test_parse_ws_url() -> None:
    t = parse_ws_url("wss://api.openai.com/v1/responses")
    assert (t.host, t.port, t.path, t.secure, t.authority) == (
        "api.openai.com",
        443,
        "/v1/responses",
        True,
        "api.openai.com",
    )
    t = parse_ws_url("ws://127.0.0.1:9090/v1/responses")
    assert (t.port, t.secure, t.authority) == (9090, False, "127.0.0.1:9090")
    with pytest.raises(ValueError):
        parse_ws_url("https://api.openai.com/v1/responses")


# -- messages -----------------------------------------------------------------------------


async def test_text_round_trip(conn: UpstreamWS) -> None:
    await conn.send_text('{"type":"response.create","input":[]}')
    assert await conn.recv(timeout=DEADLINE_S) == 'echo:{"type":"response.create","input":[]}'
    await conn.send_text(b"as-bytes")  # bytes are sent as a text frame
    got = await conn.recv(timeout=DEADLINE_S)
    assert got == "echo:as-bytes" and isinstance(got, str)
    await conn.send_text("unicode \u00e9\u4e2d")
    # Text that is not ASCII stays the (checked) UTF-8 bytes: the client gets them as is.
    assert await conn.recv(timeout=DEADLINE_S) == "echo:unicode \u00e9\u4e2d".encode()


async def test_binary_message_is_returned_as_bytes(conn: UpstreamWS) -> None:
    await conn.send_text("bytes:raw")
    assert await conn.recv(timeout=DEADLINE_S) == b"raw"


async def test_many_messages_in_order(conn: UpstreamWS) -> None:
    for i in range(200):
        await conn.send_text(str(i))
    assert [await conn.recv(timeout=DEADLINE_S) for _ in range(200)] == [
        f"echo:{i}" for i in range(200)
    ]


async def test_message_sent_right_after_the_101_is_received(upstream: Upstream) -> None:
    conn = await open_conn(f"ws://127.0.0.1:{upstream.port}/greet")
    try:
        assert await conn.recv(timeout=DEADLINE_S) == "hello-first"
    finally:
        await conn.aclose()


async def test_fragmented_message_is_reassembled(conn: UpstreamWS) -> None:
    await conn.send_text('frag:{"type":"response.|output_text.delta",|"delta":"hi"}')
    assert (
        await conn.recv(timeout=DEADLINE_S) == '{"type":"response.output_text.delta","delta":"hi"}'
    )
    await conn.send_text("after")  # the socket is still in a sane state afterwards
    assert await conn.recv(timeout=DEADLINE_S) == "echo:after"


async def test_message_at_the_limit_passes(upstream: Upstream) -> None:
    conn = await open_conn(upstream.url, max_bytes=4096)
    try:
        await conn.send_text("big:4096")
        assert await conn.recv(timeout=DEADLINE_S) == "x" * 4096
    finally:
        await conn.aclose()


async def test_message_over_the_limit_raises_and_closes_1009(upstream: Upstream) -> None:
    conn = await open_conn(upstream.url, max_bytes=4096)
    await conn.send_text("big:5000")
    with pytest.raises(MessageTooBig):
        await conn.recv(timeout=DEADLINE_S)
    assert conn.closed
    assert conn.close_info is not None and conn.close_info.code == 1009
    await asyncio.wait_for(upstream.finished.wait(), DEADLINE_S)
    assert upstream.close_codes == [1009]  # the upstream was told why
    with pytest.raises(UpstreamClosed):
        await conn.send_text("late")
    await conn.aclose()


async def test_fragmented_message_over_the_limit_raises(upstream: Upstream) -> None:
    conn = await open_conn(upstream.url, max_bytes=4096)
    parts = "|".join(["y" * 1500] * 3)  # every fragment fits, the message does not
    await conn.send_text(f"frag:{parts}")
    with pytest.raises(MessageTooBig):
        await conn.recv(timeout=DEADLINE_S)
    assert conn.closed
    await conn.aclose()


async def test_limit_counts_bytes_not_characters(upstream: Upstream) -> None:
    # 1,500 two-byte characters are 3,000 bytes: over a 2,048-byte max_message_bytes.
    conn = await open_conn(upstream.url, max_bytes=2048)
    await conn.send_text("bigutf8:1500")
    try:
        with pytest.raises(MessageTooBig):
            await conn.recv(timeout=DEADLINE_S)
    finally:
        await conn.aclose()


# -- closing --------------------------------------------------------------------------------


async def test_server_close_1011_is_upstream_closed_with_the_code(conn: UpstreamWS) -> None:
    await conn.send_text("close:1011")
    with pytest.raises(UpstreamClosed) as closed:
        await conn.recv(timeout=DEADLINE_S)
    assert closed.value.code == 1011 and closed.value.reason == "bye"
    assert conn.closed and conn.close_info is not None and conn.close_info.code == 1011
    with pytest.raises(UpstreamClosed) as again:  # every later read says the same
        await conn.recv(timeout=DEADLINE_S)
    assert again.value.code == 1011


@pytest.mark.parametrize("code", [1000, 1008, 1012, 1013])
async def test_other_close_codes_are_reported(conn: UpstreamWS, code: int) -> None:
    await conn.send_text(f"close:{code}")
    with pytest.raises(UpstreamClosed) as closed:
        await conn.recv(timeout=DEADLINE_S)
    assert closed.value.code == code


async def test_messages_before_a_close_are_delivered_first(conn: UpstreamWS) -> None:
    await conn.send_text("then-close:a,b")
    assert await conn.recv(timeout=DEADLINE_S) == "a"
    assert await conn.recv(timeout=DEADLINE_S) == "b"
    with pytest.raises(UpstreamClosed) as closed:
        await conn.recv(timeout=DEADLINE_S)
    assert closed.value.code == 1011


async def test_tcp_drop_is_upstream_closed_1006(conn: UpstreamWS) -> None:
    await conn.send_text("drop")
    with pytest.raises(UpstreamClosed) as closed:
        await conn.recv(timeout=DEADLINE_S)
    assert closed.value.code == 1006
    assert conn.closed


async def test_send_after_server_close_raises(conn: UpstreamWS) -> None:
    await conn.send_text("close:1011")
    with pytest.raises(UpstreamClosed):
        await conn.recv(timeout=DEADLINE_S)
    with pytest.raises(UpstreamClosed):
        await conn.send_text("late")


async def test_send_and_ping_after_own_close_raise(upstream: Upstream) -> None:
    conn = await open_conn(upstream.url)
    await conn.aclose()
    assert conn.closed
    with pytest.raises(UpstreamClosed):
        await conn.send_text("late")
    with pytest.raises(UpstreamClosed):
        await conn.ping(timeout=1.0)
    await asyncio.wait_for(upstream.finished.wait(), DEADLINE_S)
    assert upstream.close_codes == [1000]  # a clean close frame was sent


async def test_abort_marks_closed(conn: UpstreamWS) -> None:
    conn.abort()
    assert conn.closed and conn.close_info is not None and conn.close_info.code == 1006
    with pytest.raises(UpstreamClosed):
        await conn.recv(timeout=DEADLINE_S)


# -- timeouts, pings, concurrency -------------------------------------------------------------


async def test_recv_timeout_raises_timeout_error_and_keeps_the_socket(conn: UpstreamWS) -> None:
    with pytest.raises(TimeoutError):
        await conn.recv(timeout=0.05)
    assert not conn.closed
    await conn.send_text("still-here")
    assert await conn.recv(timeout=DEADLINE_S) == "echo:still-here"


async def test_ping_when_idle(conn: UpstreamWS) -> None:
    await conn.ping(timeout=DEADLINE_S)
    await conn.ping(timeout=DEADLINE_S)
    await conn.send_text("after")
    assert await conn.recv(timeout=DEADLINE_S) == "echo:after"


async def test_ping_and_write_while_another_task_is_blocked_in_recv(conn: UpstreamWS) -> None:
    reader = asyncio.create_task(conn.recv(timeout=DEADLINE_S))
    await wait_until(lambda: conn.reading, "the reader to block in recv")
    # no shared lock: the pong is picked up by the blocked reader, ping returns
    await conn.ping(timeout=DEADLINE_S)
    assert not reader.done()  # a pong is not a message
    await asyncio.gather(conn.ping(timeout=DEADLINE_S), conn.send_text("concurrent"))
    assert await reader == "echo:concurrent"


async def test_server_ping_is_answered_by_the_reader(conn: UpstreamWS) -> None:
    await conn.send_text("server-ping")
    assert await conn.recv(timeout=DEADLINE_S) == "pong-received"


@dataclass
class PongHolder:
    """A raw upstream that answers a ping with one text event, then holds the pong until
    ``release_pong`` is set (never, for a half-open socket)."""

    got_ping: asyncio.Event = field(default_factory=asyncio.Event)
    release_pong: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ws = WSConnection(ConnectionType.SERVER)
        while True:
            data = await reader.read(65536)
            if not data:
                return
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, WSRequest):
                    writer.write(ws.send(AcceptConnection()))
                elif isinstance(event, Ping):
                    self.got_ping.set()
                    writer.write(ws.send(TextMessage(data="event-before-pong")))
                    await writer.drain()
                    await self.release_pong.wait()
                    writer.write(ws.send(event.response()))
                elif isinstance(event, TextMessage):
                    writer.write(ws.send(TextMessage(data=f"echo:{event.data}")))
            await writer.drain()


@pytest.fixture
async def pong_holder() -> AsyncIterator[tuple[PongHolder, str]]:
    holder = PongHolder()
    server = await asyncio.start_server(holder.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield holder, f"ws://127.0.0.1:{port}/"
    finally:
        holder.release_pong.set()
        server.close()
        with contextlib.suppress(Exception):
            await server.wait_closed()


async def test_ping_completes_when_the_other_reader_stops_before_the_pong(
    pong_holder: tuple[PongHolder, str],
) -> None:
    holder, url = pong_holder
    conn = await open_conn(url)
    try:
        reader = asyncio.create_task(conn.recv(timeout=DEADLINE_S))
        await wait_until(lambda: conn.reading, "the reader to block in recv")
        ping = asyncio.create_task(conn.ping(timeout=DEADLINE_S))
        await asyncio.wait_for(holder.got_ping.wait(), DEADLINE_S)
        assert await reader == "event-before-pong"  # the reader is done and stops reading
        holder.release_pong.set()
        await ping  # the pong was sent: the ping must succeed
    finally:
        await conn.aclose()


async def test_ping_mid_turn_times_out_on_a_half_open_upstream(
    pong_holder: tuple[PongHolder, str],
) -> None:
    # The upstream never answers the ping: during a turn (a reader blocked in recv) the
    # pong deadline still fires, and only the ping fails; the reader keeps its messages.
    _, url = pong_holder
    conn = await open_conn(url)
    try:
        reader = asyncio.create_task(conn.recv(timeout=DEADLINE_S))
        await wait_until(lambda: conn.reading, "the reader to block in recv")
        with pytest.raises(TimeoutError):
            await conn.ping(timeout=0.2)
        assert await reader == "event-before-pong"
        assert not conn.closed  # the caller decides: abort() retires a half-open socket
        conn.abort()
        assert conn.closed and conn.close_info is not None and conn.close_info.code == 1006
    finally:
        await conn.aclose()


# -- HTTP CONNECT proxy ---------------------------------------------------------------------


@dataclass
class ConnectProxy:
    tunnels: list[str] = field(default_factory=list)
    refuse: bool = False

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        method, target = head.split()[:2]
        if method != b"CONNECT" or self.refuse:
            writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            writer.close()
            return
        self.tunnels.append(target.decode())
        host, port = target.decode().rsplit(":", 1)
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

        await asyncio.gather(
            pipe(reader, up_writer), pipe(up_reader, writer), return_exceptions=True
        )


@pytest.fixture
async def proxy() -> AsyncIterator[tuple[ConnectProxy, str]]:
    p = ConnectProxy()
    server = await asyncio.start_server(p.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield p, f"http://127.0.0.1:{port}"
    finally:
        server.close()


async def test_connect_through_an_http_connect_proxy(
    upstream: Upstream, proxy: tuple[ConnectProxy, str]
) -> None:
    p, proxy_url = proxy
    first = await open_conn(upstream.url, proxy_url=proxy_url)
    second = await open_conn(upstream.url, proxy_url=proxy_url)
    try:
        await first.send_text("via-proxy")
        assert await first.recv(timeout=DEADLINE_S) == "echo:via-proxy"
        await second.send_text("second")
        assert await second.recv(timeout=DEADLINE_S) == "echo:second"
        assert first.response_headers["x-codex-turn-state"] == "ts-abc"
    finally:
        await first.aclose()
        await second.aclose()
    assert p.tunnels == [f"127.0.0.1:{upstream.port}"] * 2  # one tunnel per socket
    assert upstream.request_paths == ["/v1/responses"] * 2


async def test_proxy_refusal_is_a_dial_error(
    upstream: Upstream, proxy: tuple[ConnectProxy, str]
) -> None:
    p, proxy_url = proxy
    p.refuse = True
    with pytest.raises(DialError, match="407"):
        await open_conn(upstream.url, proxy_url=proxy_url)
    assert upstream.request_paths == []


async def test_unsupported_proxy_scheme_is_a_dial_error(upstream: Upstream) -> None:
    with pytest.raises(DialError):
        await open_conn(upstream.url, proxy_url="socks5://127.0.0.1:1080")


# -- a plain echo upstream: idleness, wss, the read deadline ----------------------------------


async def echo(ws: ServerConnection) -> None:
    async for message in ws:
        if message == "close-1011":
            await ws.close(1011, "overloaded")
            return
        if message == "close-empty":  # a close frame with no status code at all
            ws.transport.write(b"\x88\x00")
            return
        if isinstance(message, str) and message.startswith("burst:"):
            count, size = (int(x) for x in message[6:].split(","))
            for _ in range(count):
                await ws.send("z" * size)
            continue
        if isinstance(message, str) and message.startswith("cjk:"):
            count, size = (int(x) for x in message[4:].split(","))
            for _ in range(count):
                await ws.send("\u6f22" * size)  # three UTF-8 bytes per character
            continue
        if isinstance(message, str) and message.startswith("raw:"):
            ws.transport.write(bytes.fromhex(message[4:]))  # frames written as given
            continue
        await ws.send(f"echo:{message}")


@pytest.fixture
async def server() -> AsyncIterator[int]:
    async with serve(echo, "127.0.0.1", 0) as srv:
        yield srv.sockets[0].getsockname()[1]


async def test_an_idle_socket_notices_a_close_without_a_reader(server: int) -> None:
    conn = await open_conn(f"ws://127.0.0.1:{server}/")
    await conn.send_text("close-1011")
    conn.watch_idle()
    await wait_until(lambda: conn.closed, "the close to be noticed while idle")
    assert conn.close_info is not None and conn.close_info.code == 1011
    await conn.aclose()


async def test_a_close_frame_without_a_status_code(server: int) -> None:
    conn = await open_conn(f"ws://127.0.0.1:{server}/")
    await conn.send_text("close-empty")
    with pytest.raises(UpstreamClosed) as closed:
        await conn.recv(timeout=DEADLINE_S)
    assert closed.value.code == 1005 and closed.value.reason == ""  # "no status received"
    await conn.aclose()


async def test_a_message_arriving_while_idle_retires_the_socket(server: int) -> None:
    conn = await open_conn(f"ws://127.0.0.1:{server}/")
    await conn.send_text("late-answer")
    conn.watch_idle()  # back in the pool before the answer arrived
    await wait_until(lambda: conn.closed, "the unexpected message to retire the socket")
    assert conn.close_info is not None and conn.close_info.code == 1002
    with pytest.raises(UpstreamClosed):
        await conn.recv(timeout=DEADLINE_S)
    await conn.aclose()


async def test_a_leased_socket_receives_again_after_stop_watch(server: int) -> None:
    conn = await open_conn(f"ws://127.0.0.1:{server}/")
    conn.watch_idle()
    await conn.ping(timeout=DEADLINE_S)  # a pong while idle is not a message
    conn.stop_watch()
    await conn.send_text("leased")
    assert await conn.recv(timeout=DEADLINE_S) == "echo:leased"
    assert not conn.closed
    await conn.aclose()


@pytest.mark.parametrize("nowait", [False, True], ids=["recv", "recv_nowait"])
async def test_reading_pauses_while_the_backlog_is_high_and_resumes_when_drained(
    server: int, monkeypatch: pytest.MonkeyPatch, nowait: bool
) -> None:
    """Taken with recv, or with recv_nowait first (what is already queued, without a
    coroutine) and recv only when nothing is: the same messages, the same bookkeeping."""
    monkeypatch.setattr(connection, "PAUSE_ABOVE", 10_000)
    monkeypatch.setattr(connection, "RESUME_BELOW", 2_000)
    conn = await open_conn(f"ws://127.0.0.1:{server}/")
    underlying = conn._transport.underlying_transport  # type: ignore[union-attr]
    assert conn.recv_nowait() is None  # nothing queued: a caller awaits recv instead

    async def take() -> str | bytes:
        queued = conn.recv_nowait() if nowait else None
        return queued if queued is not None else await conn.recv(timeout=DEADLINE_S)

    await conn.send_text("burst:40,1000")  # 40 KB unread: well over the pause mark
    await wait_until(lambda: not underlying.is_reading(), "reading to pause")
    received = [await take() for _ in range(40)]
    assert received == ["z" * 1000] * 40  # nothing lost across the pause
    assert underlying.is_reading() and conn._buffered == 0
    await conn.send_text("after")
    assert await conn.recv(timeout=DEADLINE_S) == "echo:after"
    await conn.aclose()


async def test_non_ascii_text_leaves_no_backlog_behind(
    server: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each message is 3,000 bytes but 1,000 characters: the backlog must count the same
    # unit in and out, or it grows by 2,000 per message until reading pauses for good.
    monkeypatch.setattr(connection, "PAUSE_ABOVE", 10_000)
    monkeypatch.setattr(connection, "RESUME_BELOW", 2_000)
    conn = await open_conn(f"ws://127.0.0.1:{server}/")
    underlying = conn._transport.underlying_transport  # type: ignore[union-attr]
    expected = "\u6f22" * 1000
    for _ in range(20):
        await conn.send_text("cjk:5,1000")
        for _ in range(5):
            message = await conn.recv(timeout=DEADLINE_S)
            assert message == expected.encode() or message == expected
    assert conn._buffered == 0
    assert underlying.is_reading()
    await conn.send_text("cjk:1,1000")
    conn.push_back(await conn.recv(timeout=DEADLINE_S))
    assert conn._buffered == 3000
    await conn.recv(timeout=DEADLINE_S)
    assert conn._buffered == 0
    await conn.aclose()


@pytest.mark.parametrize(
    "frames",
    [
        "8102c328",  # one text frame: a lead byte followed by a non-continuation byte
        "0101c3" + "800128",  # the same split over two fragments
    ],
)
async def test_text_that_is_not_utf8_closes_with_1007(server: int, frames: str) -> None:
    conn = await open_conn(f"ws://127.0.0.1:{server}/")
    await conn.send_text("raw:810161")  # a good message first
    assert await conn.recv(timeout=DEADLINE_S) == "a"
    await conn.send_text(f"raw:{frames}")
    with pytest.raises(UpstreamProtocolError, match="UTF-8"):
        await conn.recv(timeout=DEADLINE_S)
    assert conn.closed and conn.close_info is not None and conn.close_info.code == 1007
    await conn.aclose()


@pytest.mark.parametrize("frames", ["8202fffe", "0201ff" + "8001fe"])
async def test_binary_that_is_not_utf8_closes_with_1003(server: int, frames: str) -> None:
    # Every message is relayed to the client as text: binary data that is not UTF-8
    # cannot be, so it ends the socket instead of reaching the client.
    conn = await open_conn(f"ws://127.0.0.1:{server}/")
    await conn.send_text(f"raw:{frames}")
    with pytest.raises(UpstreamProtocolError, match="UTF-8"):
        await conn.recv(timeout=DEADLINE_S)
    assert conn.closed and conn.close_info is not None and conn.close_info.code == 1003
    await conn.aclose()


async def test_fragmented_text_is_checked_whole(server: int) -> None:
    # A two-byte character split across fragments is valid once the message is whole.
    conn = await open_conn(f"ws://127.0.0.1:{server}/")
    await conn.send_text("raw:" + "0101c3" + "8001a9" + "0101" + b"x".hex() + "8001" + b"y".hex())
    assert await conn.recv(timeout=DEADLINE_S) == "\u00e9".encode()
    assert await conn.recv(timeout=DEADLINE_S) == "xy"
    await conn.aclose()


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


async def test_wss_through_an_http_connect_proxy(tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))
    tunnel = ConnectProxy()
    proxy = await asyncio.start_server(tunnel.handle, "127.0.0.1", 0)
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
    assert tunnel.tunnels == [f"localhost:{port}"]


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
