"""ClientSink: events straight to the ASGI send, close through Starlette, failures = gone."""

from __future__ import annotations

from typing import Any

from starlette.websockets import WebSocket, WebSocketState

from gateway.session import ClientSink


class AsgiSend:
    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.fail: BaseException | None = None

    async def __call__(self, message: dict[str, Any]) -> None:
        if self.fail is not None:
            raise self.fail
        self.messages.append(message)


async def _never_receive() -> dict[str, Any]:
    raise AssertionError("the sink never receives")


def accepted(send: AsgiSend) -> WebSocket:
    ws = WebSocket({"type": "websocket", "path": "/", "headers": []}, _never_receive, send)
    ws.application_state = WebSocketState.CONNECTED
    return ws


async def test_text_and_bytes_frames_go_out_as_text() -> None:
    send = AsgiSend()
    sink = ClientSink(accepted(send))
    assert await sink.send('{"type":"a"}')
    assert await sink.send(b'{"type":"b"}')
    assert send.messages == [
        {"type": "websocket.send", "text": '{"type":"a"}'},
        {"type": "websocket.send", "text": '{"type":"b"}'},
    ]


async def test_a_failed_write_means_the_client_is_gone() -> None:
    send = AsgiSend()
    sink = ClientSink(accepted(send))
    send.fail = OSError("connection reset")
    assert not await sink.send('{"type":"a"}')
    assert sink.gone
    send.fail = None
    assert not await sink.send('{"type":"b"}')  # dropped silently from now on
    assert send.messages == []


async def test_close_goes_through_starlette_and_only_once() -> None:
    send = AsgiSend()
    ws = accepted(send)
    sink = ClientSink(ws)
    await sink.close(1001, "idle timeout")
    await sink.close(1000)
    assert send.messages == [{"type": "websocket.close", "code": 1001, "reason": "idle timeout"}]
    assert ws.application_state is WebSocketState.DISCONNECTED
    assert sink.closed_code == 1001 and sink.gone
