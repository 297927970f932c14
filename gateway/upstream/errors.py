"""Upstream transport failures; ``kind`` feeds the retry classifier."""

from __future__ import annotations

CLOSE_NORMAL = 1000
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_ABNORMAL = 1006
CLOSE_TOO_BIG = 1009


class UpstreamError(Exception):
    """Base class for upstream transport failures."""

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
