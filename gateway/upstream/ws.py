"""The upstream WebSocket client's public names, importable from one place.

errors.py      failure types (``kind`` feeds the retry classifier)
watchdog.py    one lazily re-armed read deadline per connection
connect.py     URL, HTTP CONNECT proxy and handshake (picows)
connection.py  UpstreamWS: the one read path, send, ping with a pong deadline, close
"""

from gateway.upstream.connect import Target, connect, parse_ws_url
from gateway.upstream.connection import UpstreamWS, byte_size
from gateway.upstream.errors import (
    CLOSE_ABNORMAL,
    CLOSE_TOO_BIG,
    DialError,
    HandshakeRejected,
    MessageTooBig,
    UpstreamClosed,
    UpstreamError,
    UpstreamProtocolError,
)
from gateway.upstream.watchdog import ReadWatchdog

__all__ = [
    "CLOSE_ABNORMAL",
    "CLOSE_TOO_BIG",
    "DialError",
    "HandshakeRejected",
    "MessageTooBig",
    "ReadWatchdog",
    "Target",
    "UpstreamClosed",
    "UpstreamError",
    "UpstreamProtocolError",
    "UpstreamWS",
    "byte_size",
    "connect",
    "parse_ws_url",
]
