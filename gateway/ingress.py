"""Event frames written straight to the client's socket.

Under uvicorn's websockets-sansio protocol (the server's default) an event sent through
ASGI passes Starlette's send wrapper, the handshake guard's wrapper, a message dict,
``str.encode``, websockets' frame serializer and a join before one ``transport.write``.
After the handshake none of those layers changes a data frame, so the protocol puts a
``TextFrameWriter`` in the scope's extensions (under ``TEXT_FRAMES``) and the app's sink
writes each event as one unmasked text frame, the same bytes websockets would produce.

Only data frames take this way. Accepting, closing, pings and reading stay with the
protocol, and the writer refuses to write in every state where the protocol's own send
would fail: once the close was sent or received, once the client disconnected or the
transport is closing. While the transport is paused for writing the caller waits on
``writable``, as the protocol's send does. A socket that negotiated an extension
(permessage-deflate, which frames and compresses data itself) gets no writer, nor does
any other server implementation: those keep the ASGI path.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Mapping
from typing import Any

from websockets.protocol import State

TEXT_FRAMES = "gateway.text_frames"

_OPEN = State.OPEN
_FIN_TEXT = 0x81
# A server's frames are unmasked: the length is 7 bits, or 126 + 16 bits, or 127 + 64 bits.
_SHORT_HEADERS = tuple(bytes((_FIN_TEXT, n)) for n in range(126))
_MEDIUM = struct.Struct("!BBH").pack
_LONG = struct.Struct("!BBQ").pack
# Past this size the payload is handed to the transport beside its header rather than
# copied behind it: one scatter write instead of a copy of the whole event.
GATHER_ABOVE = 8 * 1024


def text_frame_header(size: int) -> bytes:
    """The header of one final, unmasked text frame carrying ``size`` payload bytes."""
    if size < 126:
        return _SHORT_HEADERS[size]
    if size < 65536:
        return _MEDIUM(_FIN_TEXT, 126, size)
    return _LONG(_FIN_TEXT, 127, size)


class TextFrameWriter:
    """Writes text frames on one websockets-sansio connection, bypassing ASGI."""

    __slots__ = ("_conn", "_proto", "_transport", "writable")

    def __init__(self, proto: Any) -> None:
        self._proto = proto
        self._conn = proto.conn
        self._transport: asyncio.Transport = proto.transport
        # Set while the transport takes writes; cleared by the protocol's pause_writing,
        # set again by resume_writing and on connection loss.
        self.writable: asyncio.Event = proto.writable

    @property
    def ready(self) -> bool:
        """The handshake was accepted and nothing has closed the socket yet."""
        proto = self._proto
        return bool(
            proto.handshake_complete
            and proto.initial_response is None
            and not proto.close_sent
            and not proto.disconnected
        )

    def write(self, payload: str | bytes) -> bool:
        """Write ``payload`` as one text frame; False, writing nothing, once the socket is
        closing or gone. Does not wait: callers wait for ``writable`` first."""
        proto = self._proto
        transport = self._transport
        if (
            proto.close_sent
            or proto.disconnected
            or self._conn.state is not _OPEN
            or transport.is_closing()
        ):
            return False
        data = payload.encode() if isinstance(payload, str) else payload
        size = len(data)
        if size < 126:
            transport.write(_SHORT_HEADERS[size] + data)
        elif size <= GATHER_ABOVE:
            transport.write(_MEDIUM(_FIN_TEXT, 126, size) + data)
        else:
            transport.writelines((text_frame_header(size), data))
        return True


def text_frame_writer(scope: Mapping[str, Any]) -> TextFrameWriter | None:
    """The socket's direct writer when its server offers one and it may be used now."""
    extensions = scope.get("extensions")
    writer = extensions.get(TEXT_FRAMES) if extensions else None
    if isinstance(writer, TextFrameWriter) and writer.ready:
        return writer
    return None


def offer_text_frames(protocol_cls: Any) -> None:
    """Make ``protocol_cls`` (uvicorn's websockets-sansio protocol) offer a writer to
    each app it runs, unless the connection negotiated an extension."""
    run_asgi = protocol_cls.run_asgi

    async def run_asgi_offering_text_frames(self: Any) -> None:
        extensions = self.scope.get("extensions")
        if extensions is not None and not self.conn.extensions:
            extensions[TEXT_FRAMES] = TextFrameWriter(self)
        await run_asgi(self)

    protocol_cls.run_asgi = run_asgi_offering_text_frames
