"""The control API under ``/__sim/`` (no auth): reset, fault rules, the log, dropping sockets.

POST   /__sim/reset          clear log, faults, persisted responses; close every socket (1001)
POST   /__sim/faults         add a rule (JSON, see faults.FaultRule) -> {"id": "fault-N"}
GET    /__sim/faults         the rules with their remaining ``times`` and ``fired`` counts
DELETE /__sim/faults         remove every rule;  DELETE /__sim/faults/{id}: one rule
GET    /__sim/log            {connections, requests, counters, open_connections}
                             (?since=N skips the first N requests; ?raw=0 blanks raw text)
POST   /__sim/drop           {"account_key", "idle_only": true, "mode": "close"|"abort",
                             "code": 1001} -> {"dropped": n}
GET    /__sim/healthz        {"ok": true}
"""

from __future__ import annotations

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from sim.core import SimCore
from sim.faults import FaultRule


class DropSpec(msgspec.Struct, kw_only=True):
    account_key: str | None = None
    idle_only: bool = True
    mode: str = "close"
    code: int = 1001


async def reset(core: SimCore, request: Request) -> Response:
    sockets = list(core.sockets.values())
    core.reset()
    for sock in sockets:
        # A half-open socket cannot take a close handshake: drop its TCP instead.
        await sock.close(1001, "abort" if sock.silenced else "close")
    return JSONResponse({"ok": True, "closed": len(sockets)})


async def faults(core: SimCore, request: Request) -> Response:
    if request.method == "GET":
        return Response(msgspec.json.encode(core.faults.rules), media_type="application/json")
    if request.method == "DELETE":
        rule_id = request.path_params.get("rule_id")
        if rule_id is None:
            core.faults.clear()
            return JSONResponse({"ok": True})
        return JSONResponse({"ok": core.faults.remove(str(rule_id))})
    try:
        rule = msgspec.json.decode(await request.body(), type=FaultRule)
        core.faults.add(rule)
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)
    return JSONResponse({"id": rule.id})


async def log(core: SimCore, request: Request) -> Response:
    since = int(request.query_params.get("since", "0") or 0)
    raw = request.query_params.get("raw", "1") not in ("0", "false")
    return Response(core.log_document(since, raw), media_type="application/json")


async def drop(core: SimCore, request: Request) -> Response:
    payload = await request.body()
    try:
        spec = msgspec.json.decode(payload, type=DropSpec) if payload.strip() else DropSpec()
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)
    if spec.mode not in ("close", "abort"):
        return JSONResponse({"error": "mode must be 'close' or 'abort'"}, status_code=400)
    chosen = [
        sock
        for sock in list(core.sockets.values())
        if spec.account_key in (None, sock.account_key) and not (spec.idle_only and sock.busy)
    ]
    for sock in chosen:
        await sock.close(spec.code, "abort" if sock.silenced else spec.mode)
    return JSONResponse({"dropped": len(chosen)})


async def healthz(core: SimCore, request: Request) -> Response:
    return JSONResponse({"ok": True})
