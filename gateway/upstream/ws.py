"""Upstream WebSocket client: wsproto (sans-io) over asyncio streams.

The protocol state machine is wsproto's; this module only moves bytes between it and
the socket. One reader and one writer may run at once (no shared lock): writes go
straight into the transport buffer, and the reader answers pings itself. A pong
waiter is resolved by whichever coroutine happens to be reading.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import ssl
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

READ_CHUNK = 256 * 1024
CLOSE_ABNORMAL = 1006
CLOSE_TOO_BIG = 1009


class UpstreamError(Exception):
    """Base class for upstream transport failures; ``kind`` feeds the retry classifier."""

    kind = "transport"


class DialError(UpstreamError):
    kind = "dial"


class HandshakeRejected(UpstreamError):
    """The upstream answered the upgrade with a non-101 status."""

    kind = "handshake"

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        super().__init__(f"upstream refused the WebSocket handshake with HTTP {status}")


class UpstreamClosed(UpstreamError):
    """The upstream socket closed (``code`` 1006 when it vanished without a close frame)."""

    kind = "closed"

    def __init__(self, code: int, reason: str = "") -> None:
        self.code = code
        self.reason = reason
        super().__init__(
            f"upstream closed the socket (code {code}{', ' + reason if reason else ''})"
        )


class UpstreamProtocolError(UpstreamError):
    kind = "protocol"


class MessageTooBig(UpstreamError):
    kind = "too_big"


@dataclass(slots=True)
class Target:
    scheme: str
    host: str
    port: int
    path: str

    @property
    def secure(self) -> bool:
        return self.scheme == "wss"

    @property
    def authority(self) -> str:
        default = 443 if self.secure else 80
        return self.host if self.port == default else f"{self.host}:{self.port}"


def _wake(waiters: list[asyncio.Future[None]]) -> None:
    for fut in waiters:
        if not fut.done():
            fut.set_result(None)
    waiters.clear()


def parse_ws_url(url: str) -> Target:
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"not a ws:// or wss:// URL: {url!r}")
    port = parts.port or (443 if parts.scheme == "wss" else 80)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(parts.scheme, parts.hostname, port, path)


class ReadWatchdog:
    """A read deadline without a timer per read.

    ``asyncio.timeout`` costs ~4 µs per use (a timer armed and cancelled), which on a
    relay is paid per event. Here one timer per connection is armed lazily and only
    re-armed when it fires early (every read just moves the deadline); it cancels the
    reading task only when a read has really waited past its deadline.
    """

    __slots__ = ("_deadline", "_fired", "_handle", "_loop", "_task")

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[object] | None = None
        self._deadline = 0.0
        self._fired = False

    async def read(self, reader: asyncio.StreamReader, timeout: float) -> bytes:
        loop = self._loop or asyncio.get_running_loop()
        self._loop = loop
        self._deadline = loop.time() + timeout
        task = asyncio.current_task()
        self._task = task
        if self._handle is None:
            self._handle = loop.call_at(self._deadline, self._check)
        try:
            return await reader.read(READ_CHUNK)
        except asyncio.CancelledError:
            if self._fired and task is not None:
                self._fired = False
                if task.uncancel() == 0:
                    raise TimeoutError from None
            raise
        finally:
            self._task = None

    def _check(self) -> None:
        self._handle = None
        task = self._task
        if task is None or self._loop is None:
            return  # nobody is waiting; the next read arms a new timer
        if self._loop.time() < self._deadline:
            self._handle = self._loop.call_at(self._deadline, self._check)
            return
        self._fired = True
        task.cancel()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


def _nbytes(chunk: str | bytes) -> int:
    """Size in bytes on the wire; str.isascii() is O(1) in CPython, so ASCII costs nothing."""
    if isinstance(chunk, bytes) or chunk.isascii():
        return len(chunk)
    return len(chunk.encode())


@dataclass(slots=True)
class _State:
    pending: collections.deque[str | bytes] = field(default_factory=collections.deque)
    pong_waiters: list[asyncio.Future[None]] = field(default_factory=list)
    reader_left: list[asyncio.Future[None]] = field(default_factory=list)
    partial: list[str | bytes] = field(default_factory=list)
    partial_size: int = 0
    close: UpstreamClosed | None = None
    reading: bool = False
    watcher: asyncio.Task[None] | None = None


class UpstreamWS:
    """One established upstream WebSocket."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        ws: WSConnection,
        *,
        conn_id: str,
        response_headers: dict[str, str],
        max_message_bytes: int,
        buffered: bytes = b"",
    ) -> None:
        self.conn_id = conn_id
        self.response_headers = response_headers
        self._reader = reader
        self._writer = writer
        self._ws = ws
        self._max = max_message_bytes
        self._watchdog = ReadWatchdog()
        self._st = _State()
        # wsproto may already hold frames that arrived glued to the 101 response.
        self._feed(buffered)

    # -- state -------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._st.close is not None or self._writer.is_closing()

    @property
    def close_info(self) -> UpstreamClosed | None:
        return self._st.close

    # -- writing -----------------------------------------------------------------
    def _write(self, data: bytes) -> None:
        if self._writer.is_closing():
            raise UpstreamClosed(CLOSE_ABNORMAL, "transport closed")
        self._writer.write(data)

    async def send_text(self, data: str | bytes, timeout: float | None = None) -> None:
        """Send one text frame. Cancelling the caller abandons the write at once."""
        if self._st.close is not None:
            raise self._st.close
        text = data.decode() if isinstance(data, bytes) else data
        try:
            self._write(self._ws.send(TextMessage(data=text)))
        except LocalProtocolError as exc:
            raise UpstreamClosed(CLOSE_ABNORMAL, str(exc)) from None
        if self._writer.transport.get_write_buffer_size() > 0:
            try:
                async with asyncio.timeout(timeout):
                    await self._writer.drain()
            except (ConnectionError, OSError) as exc:
                self._mark_closed(CLOSE_ABNORMAL, str(exc))
                raise self._st.close or UpstreamClosed(CLOSE_ABNORMAL) from None

    # -- reading -----------------------------------------------------------------
    def _mark_closed(self, code: int, reason: str = "") -> None:
        self._watchdog.close()
        if self._st.close is None:
            self._st.close = UpstreamClosed(code, reason)
        for fut in self._st.pong_waiters:
            if not fut.done():
                fut.set_exception(self._st.close)
        self._st.pong_waiters.clear()

    def _feed(self, data: bytes) -> None:
        st = self._st
        ws = self._ws
        try:
            if data:
                ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, TextMessage | BytesMessage):
                    data_ = event.data
                    chunk: str | bytes = bytes(data_) if isinstance(data_, bytearray) else data_
                    if event.message_finished and not st.partial:
                        if _nbytes(chunk) > self._max:
                            raise MessageTooBig(f"upstream message over {self._max} bytes")
                        st.pending.append(chunk)
                        continue
                    st.partial.append(chunk)
                    st.partial_size += _nbytes(chunk)
                    if st.partial_size > self._max:
                        raise MessageTooBig(f"upstream message over {self._max} bytes")
                    if event.message_finished:
                        joined: str | bytes = (
                            "".join(st.partial)  # type: ignore[arg-type]
                            if isinstance(chunk, str)
                            else b"".join(st.partial)  # type: ignore[arg-type]
                        )
                        st.partial.clear()
                        st.partial_size = 0
                        st.pending.append(joined)
                elif isinstance(event, Ping):
                    self._write(ws.send(event.response()))
                elif isinstance(event, Pong):
                    for fut in st.pong_waiters:
                        if not fut.done():
                            fut.set_result(None)
                    st.pong_waiters.clear()
                elif isinstance(event, CloseConnection):
                    if ws.state is ConnectionState.REMOTE_CLOSING:
                        with contextlib.suppress(Exception):
                            self._write(ws.send(event.response()))
                    self._mark_closed(event.code, event.reason or "")
                    with contextlib.suppress(Exception):
                        self._writer.close()
        except RemoteProtocolError as exc:
            self._mark_closed(1002, f"protocol error: {exc}")
            raise UpstreamProtocolError(str(exc)) from None
        except MessageTooBig:
            self._mark_closed(CLOSE_TOO_BIG, "message too big")
            with contextlib.suppress(Exception):
                self._write(ws.send(CloseConnection(code=CLOSE_TOO_BIG)))
                self._writer.close()
            raise

    async def recv(self, timeout: float | None = None) -> str | bytes:
        """Next complete message (str for text frames). Raises UpstreamClosed at the end."""
        st = self._st
        if st.pending:
            return st.pending.popleft()
        st.reading = True
        try:
            while not st.pending:
                if st.close is not None:
                    raise st.close
                if timeout is None:
                    data = await self._reader.read(READ_CHUNK)
                else:
                    data = await self._watchdog.read(self._reader, timeout)
                if not data:
                    self._mark_closed(CLOSE_ABNORMAL, "connection lost")
                    raise self._st.close  # type: ignore[misc]
                self._feed(data)
        except TimeoutError:
            raise  # a read deadline, not a dead socket (TimeoutError is an OSError)
        except (ConnectionError, OSError) as exc:
            self._mark_closed(CLOSE_ABNORMAL, str(exc))
            raise UpstreamClosed(CLOSE_ABNORMAL, str(exc)) from None
        finally:
            st.reading = False
            _wake(st.reader_left)
        return st.pending.popleft()

    # -- idle watching -----------------------------------------------------------------
    def watch_idle(self) -> None:
        """While the socket sits idle in the pool, keep reading it: a close frame or a
        TCP drop is noticed at once (so ``closed`` is true before the next lease), and
        pings are answered. Anything else arriving unasked retires the socket."""
        st = self._st
        if st.watcher is None and st.close is None and not st.reading:
            st.watcher = asyncio.get_running_loop().create_task(self._watch_loop())

    async def stop_watch(self) -> None:
        """Hand the socket's reading back to a lessee (awaits the watcher's exit)."""
        task = self._st.watcher
        if task is None:
            return
        self._st.watcher = None
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task

    async def _watch_loop(self) -> None:
        st = self._st
        st.reading = True
        try:
            while st.close is None:
                data = await self._reader.read(READ_CHUNK)
                if not data:
                    self._mark_closed(CLOSE_ABNORMAL, "connection lost while idle")
                    break
                self._feed(data)
                if st.pending:
                    # An idle socket must not receive events; its state is unknown now.
                    st.pending.clear()
                    self._mark_closed(1002, "unexpected message while idle")
                    with contextlib.suppress(Exception):
                        self._writer.close()
        except (ConnectionError, OSError, UpstreamError):
            self._mark_closed(CLOSE_ABNORMAL, "connection lost while idle")
        finally:
            st.reading = False
            _wake(st.reader_left)

    def push_back(self, message: str | bytes) -> None:
        """Return a message to the front of the queue (the next recv gets it first)."""
        self._st.pending.appendleft(message)

    async def ping(self, timeout: float) -> None:
        """Ping and wait for the pong. While idle nobody else reads, so read here."""
        if self._st.close is not None:
            raise self._st.close
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._st.pong_waiters.append(fut)
        self._write(self._ws.send(Ping(payload=b"gw")))
        async with asyncio.timeout(timeout):
            while not fut.done():
                if self._st.reading:
                    # The reader resolves the waiter; if it stops reading before the pong
                    # arrives, wake up and read it here.
                    left: asyncio.Future[None] = loop.create_future()
                    self._st.reader_left.append(left)
                    await asyncio.wait((fut, left), return_when=asyncio.FIRST_COMPLETED)
                    continue
                data = await self._reader.read(READ_CHUNK)
                if not data:
                    self._mark_closed(CLOSE_ABNORMAL, "connection lost")
                    break
                self._feed(data)
            await fut

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        await self.stop_watch()
        if self._st.close is None:
            with contextlib.suppress(Exception):
                self._write(self._ws.send(CloseConnection(code=code, reason=reason)))
            self._mark_closed(code, reason or "closed by gateway")
        with contextlib.suppress(Exception):
            self._writer.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1.0):
                await self._writer.wait_closed()

    def abort(self) -> None:
        if self._st.watcher is not None:
            self._st.watcher.cancel()
            self._st.watcher = None
        self._mark_closed(CLOSE_ABNORMAL, "aborted by gateway")
        with contextlib.suppress(Exception):
            self._writer.transport.abort()


async def _open_tunnel(
    target: Target, proxy_url: str, timeout: float, ssl_ctx: ssl.SSLContext | None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """TCP to the proxy, HTTP CONNECT to the target, then TLS to the target if wss."""
    proxy = urlsplit(proxy_url)
    if proxy.scheme not in ("http", "https") or not proxy.hostname:
        raise DialError(f"unsupported proxy URL {proxy_url!r}")
    pport = proxy.port or (443 if proxy.scheme == "https" else 80)
    proxy_tls = ssl.create_default_context() if proxy.scheme == "https" else None
    reader, writer = await asyncio.open_connection(proxy.hostname, pport, ssl=proxy_tls)
    auth = ""
    if proxy.username:
        token = base64.b64encode(f"{proxy.username}:{proxy.password or ''}".encode()).decode()
        auth = f"Proxy-Authorization: Basic {token}\r\n"
    hostport = f"{target.host}:{target.port}"
    writer.write(f"CONNECT {hostport} HTTP/1.1\r\nHost: {hostport}\r\n{auth}\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = status_line.split()
    if len(parts) < 2 or parts[1] != "200":
        writer.close()
        raise DialError(f"proxy CONNECT to {hostport} failed: {status_line}")
    if target.secure:
        await writer.start_tls(ssl_ctx or ssl.create_default_context(), server_hostname=target.host)
    return reader, writer


async def connect(
    url: str,
    headers: list[tuple[str, str]],
    *,
    conn_id: str,
    max_message_bytes: int,
    timeout: float,
    proxy_url: str = "",
    ssl_context: ssl.SSLContext | None = None,
) -> UpstreamWS:
    """Open a WebSocket to ``url``; raises DialError or HandshakeRejected."""
    target = parse_ws_url(url)
    try:
        async with asyncio.timeout(timeout):
            if proxy_url:
                reader, writer = await _open_tunnel(target, proxy_url, timeout, ssl_context)
            else:
                tls = (ssl_context or ssl.create_default_context()) if target.secure else None
                reader, writer = await asyncio.open_connection(
                    target.host,
                    target.port,
                    ssl=tls,
                    server_hostname=target.host if tls else None,
                    limit=READ_CHUNK,
                )
            return await _handshake(reader, writer, target, headers, conn_id, max_message_bytes)
    except TimeoutError:
        raise DialError(f"connect to {target.authority} timed out after {timeout}s") from None
    except (OSError, asyncio.IncompleteReadError, ssl.SSLError) as exc:
        raise DialError(f"connect to {target.authority} failed: {exc}") from None


async def _handshake(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    target: Target,
    headers: list[tuple[str, str]],
    conn_id: str,
    max_message_bytes: int,
) -> UpstreamWS:
    ws = WSConnection(ConnectionType.CLIENT)
    extra = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
    writer.write(ws.send(Request(host=target.authority, target=target.path, extra_headers=extra)))
    await writer.drain()
    reject: RejectConnection | None = None
    body = bytearray()
    while True:
        data = await reader.read(READ_CHUNK)
        if not data:
            writer.close()
            if reject is not None:
                raise HandshakeRejected(reject.status_code, _headers(reject.headers), bytes(body))
            raise DialError("upstream closed the connection during the handshake")
        try:
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, AcceptConnection):
                    # wsproto may have buffered frames that arrived with the 101.
                    return UpstreamWS(
                        reader,
                        writer,
                        ws,
                        conn_id=conn_id,
                        response_headers=_headers(event.extra_headers),
                        max_message_bytes=max_message_bytes,
                    )
                if isinstance(event, RejectConnection):
                    reject = event
                    if not event.has_body:
                        writer.close()
                        raise HandshakeRejected(event.status_code, _headers(event.headers), b"")
                elif isinstance(event, RejectData):
                    body.extend(event.data)
                    if event.body_finished and reject is not None:
                        writer.close()
                        raise HandshakeRejected(
                            reject.status_code, _headers(reject.headers), bytes(body)
                        )
        except RemoteProtocolError as exc:
            writer.close()
            raise DialError(f"bad handshake response: {exc}") from None


def _headers(raw: object) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in raw:  # type: ignore[attr-defined]
        key = name.decode("latin-1").lower() if isinstance(name, bytes) else str(name).lower()
        out[key] = value.decode("latin-1") if isinstance(value, bytes) else str(value)
    return out
