"""The load generator: asyncio WebSocket clients in a process of their own (pinned to
CPU 1), timing every event against the simulator's ``sim_t_ns`` stamp."""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import os
import time
from dataclasses import dataclass
from typing import Any


@dataclass
class Scenario:
    name: str
    concurrency: int
    turns: int
    prompt: str
    warm: bool = False  # one unrecorded turn per socket, then all start together


def pin(pid: int, cpu: int) -> None:
    count = os.cpu_count() or 1
    if hasattr(os, "sched_setaffinity") and count > cpu:
        os.sched_setaffinity(pid, {cpu})


async def _client(
    url: str,
    headers: dict[str, str],
    turns: int,
    prompt: str,
    out: dict[str, Any],
    barrier: asyncio.Barrier | None,
) -> None:
    from websockets.asyncio.client import connect

    async with connect(
        url, additional_headers=headers, max_size=None, ping_interval=None, open_timeout=30
    ) as ws:
        if barrier is not None:
            scratch: dict[str, Any] = {"lat": [], "ttft": [], "events": 0, "turns": 0, "errors": 0}
            await _turns(ws, 1, "warm [[sim deltas=1]]", scratch)
            await barrier.wait()
        await _turns(ws, turns, prompt, out)


async def _turns(ws: Any, turns: int, prompt: str, out: dict[str, Any]) -> None:
    for _ in range(turns):
        payload = json.dumps(
            {
                "type": "response.create",
                "model": "bench",
                "store": False,
                "input": [
                    {
                        "type": "message",
                        "role": "user",
                        "content": [{"type": "input_text", "text": prompt}],
                    }
                ],
            }
        )
        sent = time.time_ns()
        await ws.send(payload)
        first = True
        while True:
            frame = await ws.recv()
            now = time.time_ns()
            stamp = frame.find('"sim_t_ns":')
            if stamp > 0:
                end = frame.find("}", stamp)  # the simulator appends sim_t_ns last
                out["lat"].append(now - int(frame[stamp + 11 : end]))
            if first:
                out["ttft"].append(now - sent)
                first = False
            out["events"] += 1
            if '"type":"response.completed"' in frame[:40]:
                out["turns"] += 1
                if '"type":"function_call"' in frame:  # continue the tool loop once
                    done = json.loads(frame)["response"]
                    call = next(i for i in done["output"] if i["type"] == "function_call")
                    payload = json.dumps(
                        {
                            "type": "response.create",
                            "model": "bench",
                            "store": False,
                            "previous_response_id": done["id"],
                            "input": [
                                {
                                    "type": "function_call_output",
                                    "call_id": call["call_id"],
                                    "output": "ok",
                                }
                            ],
                        }
                    )
                    sent = time.time_ns()
                    await ws.send(payload)
                    first = True
                    continue
                break
            if frame.startswith('{"type":"error"'):
                out["errors"] += 1
                break


async def _load(
    url: str, headers: dict[str, str], concurrency: int, turns: int, prompt: str, warm: bool
) -> dict[str, Any]:
    out: dict[str, Any] = {"lat": [], "ttft": [], "events": 0, "turns": 0, "errors": 0}
    barrier = asyncio.Barrier(concurrency) if warm else None
    started = time.perf_counter()
    results = await asyncio.gather(
        *(_client(url, headers, turns, prompt, out, barrier) for _ in range(concurrency)),
        return_exceptions=True,
    )
    out["elapsed"] = time.perf_counter() - started
    out["failures"] = [repr(r) for r in results if isinstance(r, BaseException)][:3]
    return out


def _load_process(args: tuple[str, dict[str, str], int, int, str, bool], queue: Any) -> None:
    pin(0, 1)
    import uvloop

    queue.put(uvloop.run(_load(*args)))


def run_load(url: str, headers: dict[str, str], sc: Scenario) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(
        target=_load_process,
        args=((url, headers, sc.concurrency, sc.turns, sc.prompt, sc.warm), queue),
    )
    proc.start()
    deadline = time.monotonic() + 900
    while True:
        try:
            result: dict[str, Any] = queue.get(timeout=1)
            break
        except Exception:
            if not proc.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"load generator died (exit {proc.exitcode})") from None
    proc.join(timeout=30)
    return result
