"""Structured logs: JSON lines (or key=value text), correlation ids, one line per turn.

No per-event logging on the hot path: a turn writes exactly one line when it ends.
Correlation ids (session, client, ...) live in a context variable, so every line written
while serving a client socket carries them without being passed around. Payload logging
is sampled and truncated.
"""

from __future__ import annotations

import contextlib
import logging
import random
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar, Token
from dataclasses import dataclass
from types import MappingProxyType
from typing import Protocol, TextIO
from urllib.parse import urlsplit, urlunsplit

import msgspec

from gateway.config import Config

_STD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys()) | {
    "message",
    "asctime",
    # uvicorn duplicates its message with ANSI colour codes for its own formatter.
    "color_message",
    "log_context",
}
_encoder = msgspec.json.Encoder()
_NO_FIELDS: Mapping[str, object] = MappingProxyType({})
_log_fields: ContextVar[Mapping[str, object]] = ContextVar("gateway_log_fields", default=_NO_FIELDS)

log = logging.getLogger("gateway.turn")


# -- correlation ids ---------------------------------------------------------------------
def bind_log_fields(**fields: object) -> Token[Mapping[str, object]]:
    """Add fields to every log line written in this context (and tasks it starts)."""
    merged = dict(_log_fields.get())
    merged.update({k: v for k, v in fields.items() if v is not None and v != ""})
    return _log_fields.set(merged)


def reset_log_fields(token: Token[Mapping[str, object]]) -> None:
    _log_fields.reset(token)


@contextlib.contextmanager
def log_fields(**fields: object) -> Iterator[None]:
    token = bind_log_fields(**fields)
    try:
        yield
    finally:
        reset_log_fields(token)


def current_log_fields() -> Mapping[str, object]:
    return _log_fields.get()


def _install_record_factory() -> None:
    """Stamp each record with the context's fields when it is created (in the caller's
    task), so handlers that format later (or elsewhere) still see them."""
    base = logging.getLogRecordFactory()
    if getattr(base, "_gateway_context", False):
        return

    def factory(*args: object, **kwargs: object) -> logging.LogRecord:
        record = base(*args, **kwargs)
        record.log_context = _log_fields.get()
        return record

    factory._gateway_context = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


_install_record_factory()


_SCALARS = frozenset({str, int, float, bool, type(None)})


def _plain(value: object) -> object:
    if type(value) in _SCALARS or isinstance(value, str | int | float | bool | type(None)):
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return str(value)


def record_fields(record: logging.LogRecord) -> dict[str, object]:
    """Context fields, then the record's own ``extra`` fields (which win)."""
    context: Mapping[str, object] = getattr(record, "log_context", _NO_FIELDS)
    out: dict[str, object] = {k: _plain(v) for k, v in context.items()}
    for key, value in record.__dict__.items():
        if key not in _STD_ATTRS and not key.startswith("_"):
            out[key] = _plain(value)
    return out


# -- formatters ----------------------------------------------------------------------------
def _json_head(created: float, level: str, logger: str, message: str) -> dict[str, object]:
    """The fields every JSON line starts with, in order."""
    return {"ts": round(created, 6), "level": level, "logger": logger, "msg": message}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = _json_head(record.created, record.levelname.lower(), record.name, record.getMessage())
        out.update(record_fields(record))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return _encoder.encode(out).decode()


class TextFormatter(logging.Formatter):
    """Human-readable line that keeps every field as ``key=value``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = record_fields(record)
        if not fields:
            return line
        pairs = " ".join(f"{k}={_text_value(v)}" for k, v in fields.items())
        head, sep, tail = line.partition("\n")  # keep a traceback below the fields
        return f"{head} {pairs}{sep}{tail}"


def _text_value(value: object) -> str:
    text = value if isinstance(value, str) else _encoder.encode(value).decode()
    return _encoder.encode(text).decode() if (" " in text or not text) else text


_direct: logging.StreamHandler[TextIO] | None = None  # the JSON handler setup_logging made


def setup_logging(level: str = "info", fmt: str = "json") -> None:
    global _direct
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    _direct = handler if fmt == "json" else None
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn's loggers propagate to ours (the app runs with log_config=None).
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True


# -- the one line per turn -------------------------------------------------------------------
class TrackerView(Protocol):
    """What the turn log reads from a turn's tracker (gateway.turn.TurnTracker)."""

    @property
    def response_id(self) -> str | None: ...
    @property
    def model(self) -> str | None: ...
    @property
    def input_tokens(self) -> int: ...
    @property
    def output_tokens(self) -> int: ...
    @property
    def ttft_s(self) -> float | None: ...
    @property
    def events(self) -> int: ...


class TurnFactsView(Protocol):
    """What one turn did (gateway.forward.ctx_pool.TurnFacts has this shape)."""

    @property
    def account_id(self) -> str: ...
    @property
    def retries(self) -> int: ...
    @property
    def fallback(self) -> str: ...
    @property
    def recovery(self) -> str: ...
    @property
    def drained(self) -> bool: ...
    @property
    def tracker(self) -> TrackerView | None: ...


@dataclass(slots=True)
class TurnLogFacts:
    """TurnFactsView for forwarders without a facts object of their own."""

    account_id: str = ""
    tracker: TrackerView | None = None
    retries: int = 0
    fallback: str = ""
    recovery: str = ""
    drained: bool = False


def log_turn(
    mode: str, outcome: str, facts: TurnFactsView, started: float, conn: str | None = None
) -> None:
    """Write the turn's one line; ``started`` is its ``time.perf_counter()`` at the start,
    ``conn`` the upstream connection id that served it (if any)."""
    if not log.isEnabledFor(logging.INFO):
        return
    tracker = facts.tracker
    fields: dict[str, object] = {
        "event": "turn",
        "mode": mode,
        "outcome": outcome,
        "account": facts.account_id,
        "conn": conn or "",
        "retries": facts.retries,
        "recovery": facts.recovery,
        "fallback": facts.fallback,
        "drained_after_disconnect": facts.drained,
        "duration_ms": round((time.perf_counter() - started) * 1000, 3),
    }
    if tracker is not None:
        ttft = tracker.ttft_s
        fields.update(
            response_id=tracker.response_id or "",
            model=tracker.model or "",
            ttft_ms=None if ttft is None else round(ttft * 1000, 3),
            input_tokens=tracker.input_tokens,
            output_tokens=tracker.output_tokens,
            events=tracker.events,
        )
        error = getattr(tracker, "error", None)
        if error is not None:
            fields["error_code"] = getattr(error, "code", None) or ""
    if not _write_direct(f"turn {outcome}", fields):
        log.info("turn %s", outcome, extra=fields)


def _write_direct(message: str, fields: dict[str, object]) -> bool:
    """Write an info line of ``log`` as the JSON handler would, without a LogRecord: a
    turn's line is the one line per turn, and the logging machinery (caller lookup,
    record, generic field walk) costs several times the line itself. Only when that
    handler is the one place the line goes (no other handler or filter on the way, as a
    test's capture would add); False: the caller logs it the usual way."""
    handler = _direct
    if handler is None or handler.filters:
        return False
    logger: logging.Logger | None = log
    while logger is not None:
        if logger.filters or (logger.handlers and logger is not logging.root):
            return False
        if not logger.propagate:
            return False
        logger = logger.parent
    handlers = logging.root.handlers
    if len(handlers) != 1 or handlers[0] is not handler or handler.level > logging.INFO:
        return False
    out = _json_head(time.time(), "info", log.name, message)
    for key, value in _log_fields.get().items():
        out[key] = _plain(value)
    for key, value in fields.items():
        out[key] = _plain(value)
    line = _encoder.encode(out).decode()
    handler.acquire()
    try:
        handler.stream.write(line + handler.terminator)
        handler.flush()
    except Exception:
        return False
    finally:
        handler.release()
    return True


# -- HTTP requests -----------------------------------------------------------------------------
class _HttpRequestView(Protocol):
    @property
    def client(self) -> object: ...
    @property
    def state(self) -> object: ...


class _HttpResponseView(Protocol):
    @property
    def status_code(self) -> int: ...


def log_http_request(
    request: _HttpRequestView, response: _HttpResponseView, started: float
) -> None:
    """One line per ``POST /v1/responses``: relayed upstream (with its status) or refused
    by the gateway (with the error code it answered)."""
    fields: dict[str, object] = {
        "event": "http_request",
        "status": response.status_code,
        "account": getattr(request.state, "account", ""),
        "remote": getattr(request.client, "host", ""),
        "duration_ms": round((time.perf_counter() - started) * 1000, 3),
    }
    body = getattr(response, "body", None)  # a streamed (relayed) response has none
    if isinstance(body, bytes) and response.status_code >= 400:
        try:
            error = msgspec.json.decode(body, type=_ErrorEnvelope).error
            fields["error_code"] = error.code or ""
        except msgspec.MsgspecError:
            fields["error_code"] = ""
    relayed = getattr(request.state, "relayed", body is None)
    fields["outcome"] = "relayed" if relayed else "refused"
    log.info("http request %s", response.status_code, extra=fields)


class _ErrorBody(msgspec.Struct):
    code: str | None = None


class _ErrorEnvelope(msgspec.Struct):
    error: _ErrorBody


# -- startup summary -----------------------------------------------------------------------
def redact_url(url: str) -> str:
    """The URL without its password (``redis://user:***@host``)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def startup_summary(cfg: Config) -> dict[str, object]:
    """What an operator checks first after a deploy; never a secret."""
    ws = cfg.openai_ws
    groups: dict[str, list[str]] = {}
    for account in cfg.accounts:
        groups.setdefault(account.group, []).append(account.id)
    clients: dict[str, int] = {}
    for client in cfg.clients:
        clients[client.group] = clients.get(client.group, 0) + 1
    return {
        "instance": cfg.server.instance_id,
        "mode": ws.mode,
        "websocket": "off"
        if (ws.force_http or not ws.enabled or ws.mode == "off")
        else f"on ({ws.beta_version})",
        "accounts_by_group": groups,
        "client_keys_by_group": clients,
        "statestore": redact_url(cfg.statestore.url),
        "limits": {
            "max_message_bytes": cfg.server.max_message_bytes,
            "max_conns_per_account": {a.id: a.max_conns for a in cfg.accounts},
            "transcript_max_bytes_total": ws.transcript_max_bytes_total,
            "retry_max_attempts": ws.retry_max_attempts,
            "drain_timeout_s": cfg.server.drain_timeout_s,
        },
        "metrics": "/metrics" if cfg.telemetry.metrics_enabled else "off",
        "tracing": cfg.telemetry.tracing_enabled,
    }


# -- payload sampling ------------------------------------------------------------------------
class PayloadSampler:
    """Decides per request whether to log its payload; serializes only what is logged."""

    def __init__(
        self, rate: float, max_bytes: int, rng: Callable[[], float] = random.random
    ) -> None:
        self.rate = rate
        self.max_bytes = max_bytes
        self._rng = rng
        self.serialized = 0  # how many payloads were rendered for logging

    def sample(self) -> bool:
        return self.rate > 0 and self._rng() < self.rate

    def render(self, payload: bytes | str | Callable[[], bytes]) -> str:
        """Truncated text of a payload; callables are only invoked when sampled."""
        self.serialized += 1
        data = payload() if callable(payload) else payload
        raw = data.encode() if isinstance(data, str) else data
        text = raw[: self.max_bytes].decode("utf-8", "replace")
        if len(raw) > self.max_bytes:
            text += f"...[truncated {len(raw) - self.max_bytes} bytes]"
        return text
