"""Simulator state shared by the WebSocket, HTTP and control endpoints, and the API's
request rules (continuation resolution, tool-call pairing) applied to both transports."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from sim.events import BuiltResponse, build_response, error_event, previous_not_found
from sim.faults import FaultBook, Occasion
from sim.model import (
    OUTPUT_TYPES,
    Answer,
    Item,
    StoredResponse,
    estimate_tokens,
    first_call_id,
    input_items,
    last_user_text,
    new_id,
    pairing_error,
)
from sim.records import ConnectionRecord, Counters, LogDocument, RequestRecord

if TYPE_CHECKING:
    from sim.ws import SimSocket

INVALID_KEY = {
    "error": {
        "message": "Incorrect API key provided.",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_api_key",
    }
}


class SimConfig(msgspec.Struct, kw_only=True):
    keys: tuple[str, ...] = ()  # empty: any non-empty Bearer key is an account
    timestamps: bool = False  # add "sim_t_ns" to every event, just before sending
    max_conn_age_s: float = 3600.0  # the real upstream's per-socket cap (60 minutes)
    seed: int = 1234  # for probabilistic fault rules


@dataclass
class Prepared:
    """A request that passed the rules: its effective input and token accounting."""

    context: list[Item]
    items: list[Item]
    text: str  # last user message of the effective input (directives, match_text)
    input_tokens: int
    cached_tokens: int


def bearer(headers: dict[str, str]) -> str:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _optional_bool(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def _optional_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def new_response(
    record: RequestRecord,
    body: dict[str, Any],
    prepared: Prepared,
    answer: Answer,
    *,
    generate: bool,
    cached_tokens: int,
) -> tuple[BuiltResponse, StoredResponse]:
    """A fresh response for this request: its events, and what the account keeps of it."""
    response_id = new_id("resp")
    record.response_id = response_id
    built = build_response(
        response_id, body, answer, generate, prepared.input_tokens, cached_tokens
    )
    usage = built.response["usage"]
    stored = StoredResponse(
        response_id, prepared.context, built.output, usage["input_tokens"], usage["output_tokens"]
    )
    return built, stored


class SimCore:
    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.faults = FaultBook(config.seed)
        self.sockets: dict[str, SimSocket] = {}
        self.persisted: dict[str, dict[str, StoredResponse]] = {}  # account -> id -> response
        self.connections: list[ConnectionRecord] = []
        self.requests: list[RequestRecord] = []
        self.counters = Counters()
        self._conn_seq = 0

    # -- accounts and records ---------------------------------------------------------
    def authorized(self, key: str) -> bool:
        return bool(key) and (not self.config.keys or key in self.config.keys)

    def open_connection(self, path: str, key: str, headers: dict[str, str]) -> ConnectionRecord:
        self._conn_seq += 1
        record = ConnectionRecord(
            conn_id=f"sim-conn-{self._conn_seq}",
            account_key=key,
            path=path,
            headers=headers,
            opened_at=time.time(),
        )
        self.connections.append(record)
        self.counters.connections_total += 1
        return record

    def turn_state_token(self) -> str:
        return f"ts-{self._conn_seq}"

    def new_request(
        self, transport: str, conn_id: str | None, key: str, raw: str, body: dict[str, Any]
    ) -> RequestRecord:
        raw_input = body.get("input")
        input_len = len(raw_input) if isinstance(raw_input, list) else int(raw_input is not None)
        record = RequestRecord(
            seq=len(self.requests) + 1,
            transport=transport,
            conn_id=conn_id,
            account_key=key,
            raw=raw,
            type=_optional_str(body.get("type")),
            previous_response_id=_optional_str(body.get("previous_response_id")),
            store=_optional_bool(body.get("store")),
            generate=_optional_bool(body.get("generate")),
            input_len=input_len,
            received_at=time.time(),
        )
        self.requests.append(record)
        self.counters.requests_total += 1
        return record

    def finish(self, request: RequestRecord, outcome: str) -> None:
        request.outcome = outcome
        request.finished_at = time.time()
        if outcome == "completed":
            self.counters.responses_completed += 1
        elif outcome == "client_gone":
            self.counters.client_gone += 1
        elif outcome.startswith(("error:", "http:")):
            self.counters.errors += 1

    def fail(self, request: RequestRecord, event: dict[str, Any]) -> None:
        error = event["error"]
        self.finish(request, f"error:{error['code'] or error['message']}")

    def persist(self, key: str, stored: StoredResponse) -> None:
        self.persisted.setdefault(key, {})[stored.id] = stored

    def log_document(self, since: int = 0, raw: bool = True) -> bytes:
        requests = self.requests[since:] if since else self.requests
        if not raw:
            requests = [msgspec.structs.replace(r, raw="") for r in requests]
        self.counters.connections_open = len(self.sockets)
        self.counters.faults_fired = dict(self.faults.fired_by_kind)
        doc = LogDocument(
            connections=self.connections,
            requests=requests,
            counters=self.counters,
            open_connections=len(self.sockets),
        )
        return msgspec.json.encode(doc)

    def reset(self) -> None:
        self.faults.clear()
        self.persisted.clear()
        self.connections.clear()
        self.requests.clear()
        self.counters = Counters()

    # -- the API's request rules ---------------------------------------------------------
    def prepare(
        self,
        body: dict[str, Any],
        key: str,
        transport: str,
        generate: bool,
        cached: StoredResponse | None = None,
    ) -> tuple[dict[str, Any] | None, Prepared | None]:
        """(error event, None) for a request the API refuses, else (None, prepared).

        ``cached`` is the socket's latest response (any ``store``); HTTP passes None and
        so resolves only persisted (``store: true``) responses of the account.
        """
        try:
            items = input_items(body.get("input"))
        except ValueError as exc:
            return error_event(400, "invalid_type", str(exc), "input"), None
        prev = body.get("previous_response_id")
        if prev is not None and not isinstance(prev, str):
            return error_event(
                400,
                "invalid_type",
                "Invalid type for 'previous_response_id'.",
                "previous_response_id",
            ), None
        stored: StoredResponse | None = None
        from_socket = False
        if prev:
            if cached is not None and cached.id == prev:
                stored, from_socket = cached, True
            else:
                stored = self.persisted.get(key, {}).get(prev)
        context = stored.history() + items if stored is not None else items
        text = last_user_text(context)
        occasion = Occasion(key, transport, generate, text)
        if prev and (stored is None or self.faults.take("previous_response_not_found", occasion)):
            return previous_not_found(prev), None
        continuation = bool(prev) or any(i.get("type") in OUTPUT_TYPES for i in items)
        if continuation and self.faults.take("tool_output_missing", occasion):
            call_id = first_call_id(stored.output if stored else []) or first_call_id(context)
            message = f"No tool output found for function call {call_id or 'call_unknown'}."
            return error_event(400, None, message, "input"), None
        complaint = pairing_error(context)
        if complaint:
            return error_event(400, None, complaint, "input"), None
        prior = stored.input_tokens + stored.output_tokens if stored is not None else 0
        return None, Prepared(
            context=context,
            items=items,
            text=text,
            input_tokens=max(1, prior + estimate_tokens(items)),
            cached_tokens=prior if from_socket else 0,
        )
