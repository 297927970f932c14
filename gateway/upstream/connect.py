"""Opening an upstream WebSocket: the URL, an optional HTTP CONNECT proxy, the handshake.

picows does the TCP/TLS connect, the proxy tunnel and the upgrade; this module maps its
outcomes onto ours: a refused upgrade is HandshakeRejected (status, headers, body) for
the retry classifier, anything else that keeps the socket from opening is DialError.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

from picows import WSInvalidStatusError, ws_connect

from gateway.upstream.connection import UpstreamWS
from gateway.upstream.errors import DialError, HandshakeRejected

# Frames above the message limit are refused by our own check (a 1009 close the caller
# sees as MessageTooBig); picows' own limit only guards memory far above it.
FRAME_GUARD_FACTOR = 4


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


def parse_ws_url(url: str) -> Target:
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"not a ws:// or wss:// URL: {url!r}")
    port = parts.port or (443 if parts.scheme == "wss" else 80)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(parts.scheme, parts.hostname, port, path)


def _proxy(proxy_url: str) -> str | None:
    if not proxy_url:
        return None
    proxy = urlsplit(proxy_url)
    if proxy.scheme not in ("http", "https") or not proxy.hostname:
        raise DialError(f"unsupported proxy URL {proxy_url!r} (http:// or https:// only)")
    return proxy_url


def _headers(raw: object) -> dict[str, str]:
    return {str(name).lower(): str(value) for name, value in raw.items()}  # type: ignore[attr-defined]


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
    proxy = _proxy(proxy_url)
    conn = UpstreamWS(conn_id=conn_id, max_message_bytes=max_message_bytes)
    tls = (ssl_context or ssl.create_default_context()) if target.secure else None
    try:
        async with asyncio.timeout(timeout):
            transport, _ = await ws_connect(
                lambda: conn,
                url,
                ssl_context=tls,
                websocket_handshake_timeout=timeout,
                max_frame_size=max(max_message_bytes, 1 << 20) * FRAME_GUARD_FACTOR,
                extra_headers=headers,
                max_redirects=0,
                proxy=proxy,
            )
    except WSInvalidStatusError as exc:
        response = exc.response
        if response is None:
            raise DialError(f"bad handshake response from {target.authority}: {exc}") from None
        body = response.body if response.body is not None else exc.raw_body or b""
        raise HandshakeRejected(int(response.status), _headers(response.headers), body) from None
    except TimeoutError:
        raise DialError(f"connect to {target.authority} timed out after {timeout}s") from None
    except Exception as exc:  # refused, reset, TLS, proxy refusal, not HTTP: one outcome
        raise DialError(f"connect to {target.authority} failed: {exc}") from None
    conn.response_headers = _headers(transport.response.headers)
    return conn
