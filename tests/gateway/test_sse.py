"""The SSE scanner: the same events however the bytes are split."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.forward.sse import SseScanner

STREAM = (
    b'event: response.created\r\ndata: {"type":"response.created"}\r\n\r\n'
    b": a comment\n"
    b'data: {"a":\n'
    b"data: 1}\n"
    b"id: 7\n\n"
    b"data: [DONE]\n\n"
    b"event: empty\n\n"
    b'data: {"type":"response.completed","t":"h\xc3\xa9"}\n\n'
)
EXPECTED = [
    '{"type":"response.created"}',
    '{"a":\n1}',
    '{"type":"response.completed","t":"hé"}',
]


def test_events_in_one_chunk() -> None:
    scanner = SseScanner()
    assert scanner.feed(STREAM) + scanner.close() == EXPECTED


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
def test_any_split_gives_the_same_events(cuts: list[int]) -> None:
    scanner = SseScanner()
    events: list[str] = []
    start = 0
    for cut in sorted(cuts):
        events += scanner.feed(STREAM[start:cut])
        start = cut
    events += scanner.feed(STREAM[start:])
    assert events + scanner.close() == EXPECTED


def test_an_event_left_open_at_the_end_still_counts() -> None:
    scanner = SseScanner()
    assert scanner.feed(b'data: {"x":1}') == []
    assert scanner.close() == ['{"x":1}']
    assert scanner.close() == []
