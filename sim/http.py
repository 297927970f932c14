"""``POST /v1/responses``: SSE when ``stream: true``, else the response object as JSON.

HTTP never sees socket state: ``previous_response_id`` resolves only against persisted
(``store: true``) responses of the account. Like the real endpoint it refuses the
WebSocket-only fields ``type`` and ``generate`` as unknown parameters.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from sim.core import INVALID_KEY, SimCore, bearer, new_response
from sim.events import encode, stamp
from sim.faults import Occasion
from sim.model import answer_for
from sim.records import RequestRecord

WS_ONLY_FIELDS = ("type", "generate")


def _error_body(
    message: str, error_type: str, code: str | None, param: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def _sse(event_type: str, frame: str) -> str:
    return f"event: {event_type}\ndata: {frame}\n\n"


def _injected_status(core: SimCore, record: RequestRecord, key: str) -> Response | None:
    """An ``http_status`` fault: the whole request answered with that status."""
    injected = core.faults.take("http_status", Occasion(key, "http"))
    if injected is None:
        return None
    status = injected.status or 500
    record.faults.append(injected.id)
    core.finish(record, f"http:{status}")
    extra = {"retry-after": f"{injected.retry_after:g}"} if injected.retry_after else {}
    message = injected.message or f"Simulated HTTP {status}."
    code = injected.code if isinstance(injected.code, str) else None
    error_type = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse(_error_body(message, error_type, code), status_code=status, headers=extra)


def _early_error(core: SimCore, record: RequestRecord, occasion: Occasion) -> Response | None:
    """An ``error_event`` fault due before any event: over HTTP it is an error status."""
    early = core.faults.take("error_event", occasion, lambda r: r.after_events <= 0)
    if early is None:
        return None
    status = early.status or 500
    record.faults.append(early.id)
    code = "server_error" if early.code is None else str(early.code)
    core.finish(record, f"error:{code}")
    message = early.message or "The server had an error while processing your request."
    return JSONResponse(_error_body(message, "server_error", code), status_code=status)


async def http_endpoint(core: SimCore, request: Request) -> Response:
    headers = {k.lower(): v for k, v in request.headers.items()}
    key = bearer(headers)
    raw = (await request.body()).decode("utf-8", "replace")
    if not core.authorized(key):
        return JSONResponse(INVALID_KEY, status_code=401)
    try:
        body = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        body = None
    if not isinstance(body, dict):
        record = core.new_request("http", None, key, raw, {})
        core.finish(record, "error:invalid_json")
        message = "We could not parse the JSON body of your request."
        return JSONResponse(_error_body(message, "invalid_request_error", None), status_code=400)
    record = core.new_request("http", None, key, raw, body)
    injected = _injected_status(core, record, key)
    if injected is not None:
        return injected
    for field in WS_ONLY_FIELDS:
        if field in body:
            core.finish(record, "error:unknown_parameter")
            message = f"Unknown parameter: '{field}'."
            return JSONResponse(
                _error_body(message, "invalid_request_error", "unknown_parameter", field),
                status_code=400,
            )
    error, prepared = core.prepare(body, key, "http", True)
    if error is not None or prepared is None:
        assert error is not None
        core.fail(record, error)
        return JSONResponse({"error": error["error"]}, status_code=int(error["status"]))
    occasion = Occasion(key, "http", True, prepared.text)
    early = _early_error(core, record, occasion)
    if early is not None:
        return early
    answer = answer_for(prepared.context)
    built, stored = new_response(record, body, prepared, answer, generate=True, cached_tokens=0)
    if body.get("store", True) is not False and built.response["status"] != "failed":
        core.persist(key, stored)
    if body.get("stream") is not True:
        record.terminal = built.types[-1]
        record.completed_delivered = True
        record.events_sent = 0
        core.finish(record, "completed")
        return Response(msgspec.json.encode(built.response), media_type="application/json")
    return StreamingResponse(
        _stream(core, record, built.frames, built.types, answer.delay_ms, occasion),
        media_type="text/event-stream",
        headers={"cache-control": "no-cache"},
    )


async def _stream(
    core: SimCore,
    record: RequestRecord,
    frames: list[str],
    types: list[str],
    delay_ms: float,
    occasion: Occasion,
) -> AsyncIterator[str]:
    first_delay = core.faults.take("first_byte_delay_ms", occasion)
    fail = core.faults.take("error_event", occasion, lambda r: r.after_events > 0)
    stamped = core.config.timestamps
    finished = False
    try:
        if first_delay is not None:
            record.faults.append(first_delay.id)
            await asyncio.sleep(first_delay.delay_ms / 1000.0)
        for index, frame in enumerate(frames):
            if fail is not None and index == fail.after_events:
                record.faults.append(fail.id)
                code = "server_error" if fail.code is None else str(fail.code)
                event = {
                    "type": "error",
                    "code": code,
                    "message": fail.message or "The server had an error (simulated).",
                    "param": fail.param,
                    "sequence_number": index,
                }
                yield _sse("error", encode(event))
                record.events_sent += 1
                core.finish(record, f"error:{code}")
                finished = True
                return
            if delay_ms and index:
                await asyncio.sleep(delay_ms / 1000.0)
            yield _sse(types[index], stamp(frame) if stamped else frame)
            record.events_sent += 1
            core.counters.events_sent += 1
        record.terminal = types[-1]
        record.completed_delivered = True
        core.finish(record, "completed")
        finished = True
    finally:
        if fail is not None and fail.id not in record.faults:
            core.faults.give_back(fail)
        if not finished:
            core.finish(record, "client_gone")
