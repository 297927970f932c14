"""Structured logs (R-25): JSON lines, no per-event logging, sampled + truncated payloads."""

from __future__ import annotations

import logging
import random
import sys
import time
from collections.abc import Callable

import msgspec

_STD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys()) | {
    "message",
    "asctime",
}
_encoder = msgspec.json.Encoder()


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STD_ATTRS and not key.startswith("_"):
                out[key] = (
                    value
                    if isinstance(value, str | int | float | bool | type(None))
                    else str(value)
                )
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return _encoder.encode(out).decode()


def setup_logging(level: str = "info", fmt: str = "json") -> None:
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter()
        if fmt == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    )
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


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


def monotonic_ms() -> float:
    return time.monotonic() * 1000.0
