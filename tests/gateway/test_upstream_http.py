"""gateway.upstream.http: SSE data extraction and one reusable HTTP client per proxy."""

from __future__ import annotations

from collections.abc import AsyncIterator

from gateway.upstream.http import HttpClients, iter_sse_data


async def lines_of(*lines: str) -> AsyncIterator[str]:
    for line in lines:
        yield line


async def collect(*lines: str) -> list[str]:
    return [data async for data in iter_sse_data(lines_of(*lines))]


async def test_one_event_per_blank_line() -> None:
    got = await collect(
        "event: response.created",
        'data: {"type":"response.created"}',
        "",
        "event: response.output_text.delta",
        'data: {"type":"response.output_text.delta","delta":"hi"}',
        "",
    )
    assert got == [
        '{"type":"response.created"}',
        '{"type":"response.output_text.delta","delta":"hi"}',
    ]


async def test_multi_line_data_is_joined_with_newlines() -> None:
    assert await collect("data: {", 'data: "a": 1', "data: }", "") == ['{\n"a": 1\n}']


async def test_comments_and_other_fields_are_ignored() -> None:
    got = await collect(
        ": keep-alive",
        "",
        "id: 7",
        "retry: 1000",
        "event: response.completed",
        ": a comment between fields",
        'data: {"type":"response.completed"}',
        "",
    )
    assert got == ['{"type":"response.completed"}']


async def test_done_marker_is_dropped() -> None:
    assert await collect('data: {"type":"x"}', "", "data: [DONE]", "") == ['{"type":"x"}']


async def test_trailing_data_without_a_blank_line_is_flushed() -> None:
    assert await collect('data: {"type":"a"}', "", 'data: {"type":"b"}') == [
        '{"type":"a"}',
        '{"type":"b"}',
    ]
    assert await collect("data: [DONE]") == []


async def test_only_one_leading_space_is_stripped() -> None:
    assert await collect("data:{}", "", "data:  x", "") == ["{}", " x"]


async def test_blank_lines_without_data_yield_nothing() -> None:
    assert await collect("", "", "event: ping", "", "") == []
    assert await collect() == []


async def test_one_client_per_proxy_url_reused() -> None:
    clients = HttpClients(connect_timeout=1.0, read_timeout=5.0)
    try:
        direct = clients.get()
        assert clients.get("") is direct
        via_a = clients.get("http://proxy-a:3128")
        via_b = clients.get("http://proxy-b:3128")
        assert via_a is not direct and via_b is not via_a
        assert clients.get("http://proxy-a:3128") is via_a
        assert clients.get("http://proxy-b:3128") is via_b
        assert clients.get() is direct
        assert clients.count == 3
    finally:
        await clients.aclose()
    assert clients.count == 0
    assert direct.is_closed and via_a.is_closed and via_b.is_closed
