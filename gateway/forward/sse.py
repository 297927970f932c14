"""Server-sent events, sans-io: raw bytes in (in whatever chunks the network gives),
``data`` payloads out. The relay forwards the same bytes untouched; this only watches
them so the turn knows its response id, pending calls and terminal event."""

from __future__ import annotations


class SseScanner:
    """Feed raw SSE bytes; get each complete event's ``data`` (multi-line data joined by
    newlines). ``[DONE]`` and events without data are skipped."""

    __slots__ = ("_data", "_partial")

    def __init__(self) -> None:
        self._partial = b""
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[str]:
        events: list[str] = []
        buffer = self._partial + chunk if self._partial else chunk
        start = 0
        while True:
            end = buffer.find(b"\n", start)
            if end < 0:
                break
            line = buffer[start:end]
            start = end + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            self._line(line, events)
        self._partial = buffer[start:]
        return events

    def close(self) -> list[str]:
        """The stream ended: an event still open (no blank line after it) counts."""
        events: list[str] = []
        if self._partial:
            self._line(self._partial.rstrip(b"\r"), events)
            self._partial = b""
        self._line(b"", events)
        return events

    def _line(self, line: bytes, events: list[str]) -> None:
        if not line:
            if self._data:
                payload = b"\n".join(self._data)
                self._data = []
                if payload != b"[DONE]":
                    events.append(payload.decode("utf-8", "replace"))
            return
        if line.startswith(b"data:"):
            value = line[5:]
            self._data.append(value[1:] if value.startswith(b" ") else value)
        # "event:", "id:", "retry:" and comments carry nothing the JSON lacks.
