"""What the simulator records (``GET /__sim/log``); shared by the server and its clients."""

from __future__ import annotations

import json
from typing import Any

import msgspec


class ConnectionRecord(msgspec.Struct, kw_only=True):
    """One WebSocket handshake, accepted (101) or refused (401, an injected status)."""

    conn_id: str
    account_key: str
    path: str
    headers: dict[str, str]  # lower-cased request headers of the upgrade
    opened_at: float  # time.time()
    handshake_status: int = 101
    turn_state: str | None = None  # the x-codex-turn-state sent on the 101
    closed_at: float | None = None
    close_code: int | None = None  # the code we closed with, else the client's (1006 = TCP gone)
    closed_by: str | None = None  # "server" | "client"


class RequestRecord(msgspec.Struct, kw_only=True):
    """One client frame (WS) or POST body (HTTP), and what became of it.

    ``outcome``: "in_flight", "completed" (also failed/incomplete terminals: see
    ``terminal``), "error:<code or message>", "client_gone" (a send failed mid-stream),
    "closed:<code>" / "aborted" (a fault closed the socket), "silent" (half-open fault),
    "http:<status>" (an injected HTTP status), "ignored" (frame sent while silenced).
    """

    seq: int
    transport: str  # "ws" | "http"
    conn_id: str | None
    account_key: str
    raw: str  # the exact frame / body text as received
    type: str | None = None
    previous_response_id: str | None = None
    store: bool | None = None  # as sent (None: absent, which the API treats as true)
    generate: bool | None = None  # as sent (None: absent)
    input_len: int = 0
    outcome: str = "in_flight"
    terminal: str | None = None  # type of the terminal event written, if any
    response_id: str | None = None
    events_sent: int = 0
    completed_delivered: bool = False  # the terminal event was written to the socket
    received_at: float = 0.0
    finished_at: float | None = None
    faults: list[str] = msgspec.field(default_factory=list)  # ids of rules that fired on it

    def body(self) -> dict[str, Any]:
        """The frame / body as JSON (``{}`` when it was not a JSON object)."""
        try:
            value = json.loads(self.raw)
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}

    def input_items(self) -> list[dict[str, Any]]:
        value = self.body().get("input")
        if isinstance(value, str):
            return [{"type": "message", "role": "user", "content": value}]
        return [i for i in value if isinstance(i, dict)] if isinstance(value, list) else []


class Counters(msgspec.Struct, kw_only=True):
    connections_total: int = 0
    connections_open: int = 0
    handshakes_refused: int = 0
    requests_total: int = 0
    responses_completed: int = 0
    errors: int = 0
    client_gone: int = 0
    events_sent: int = 0
    faults_fired: dict[str, int] = msgspec.field(default_factory=dict)


class LogDocument(msgspec.Struct, kw_only=True):
    connections: list[ConnectionRecord]
    requests: list[RequestRecord]
    counters: Counters
    open_connections: int
