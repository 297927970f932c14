"""HTTP upstream: one reusable httpx client per proxy URL, SSE parsed to events.

SSE ``data:`` payloads are the same JSON objects the WebSocket transport sends as
frames, so a fallback turn relays them to a WebSocket client unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping

import httpx


class HttpUpstreamError(Exception):
    def __init__(self, status: int, body: bytes, headers: Mapping[str, str]) -> None:
        self.status = status
        self.body = body
        self.headers = dict(headers)
        super().__init__(f"upstream HTTP {status}")


class HttpClients:
    """httpx.AsyncClient per proxy URL, created on first use and shared by all accounts."""

    def __init__(
        self,
        *,
        connect_timeout: float,
        read_timeout: float,
        max_connections: int = 512,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._clients: dict[str, httpx.AsyncClient] = {}
        self._transport = transport  # tests pass an httpx.MockTransport
        self._timeout = httpx.Timeout(
            connect=connect_timeout, read=read_timeout, write=60.0, pool=connect_timeout
        )
        self._limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=128)

    def get(self, proxy_url: str = "") -> httpx.AsyncClient:
        client = self._clients.get(proxy_url)
        if client is None:
            client = httpx.AsyncClient(
                proxy=(proxy_url or None) if self._transport is None else None,
                transport=self._transport,
                timeout=self._timeout,
                limits=self._limits,
                trust_env=False,
                http2=False,
            )
            self._clients[proxy_url] = client
        return client

    @property
    def count(self) -> int:
        return len(self._clients)

    async def aclose(self) -> None:
        for client in self._clients.values():
            with contextlib.suppress(Exception):
                await client.aclose()
        self._clients.clear()


async def iter_sse_data(lines: AsyncIterator[str]) -> AsyncIterator[str]:
    """Yield each event's ``data`` payload (multi-line data joined by newlines)."""
    data: list[str] = []
    async for line in lines:
        if not line:
            if data:
                payload = "\n".join(data)
                data.clear()
                if payload != "[DONE]":
                    yield payload
            continue
        if line.startswith("data:"):
            value = line[5:]
            data.append(value[1:] if value.startswith(" ") else value)
        # "event:", "id:", "retry:" and comments carry nothing the JSON lacks.
    if data:
        payload = "\n".join(data)
        if payload != "[DONE]":
            yield payload


@contextlib.asynccontextmanager
async def open_stream(
    client: httpx.AsyncClient, url: str, body: bytes, headers: list[tuple[str, str]]
) -> AsyncIterator[httpx.Response]:
    """POST and yield the streaming response; non-2xx raises HttpUpstreamError with the body."""
    request = client.build_request("POST", url, content=body, headers=headers)
    response = await client.send(request, stream=True)
    try:
        if response.status_code >= 400:
            raw = await response.aread()
            raise HttpUpstreamError(response.status_code, raw, response.headers)
        yield response
    finally:
        await response.aclose()
