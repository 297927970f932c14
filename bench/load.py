"""The load generator: asyncio WebSocket clients in a process of their own (pinned to
CPU 1), timing every event against the simulator's ``sim_t_ns`` stamp."""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Scenario:
    name: str
    concurrency: int
    turns: int
    prompt: str
    warm: bool = False  # one unrecorded turn per socket, then all start together
    turns_per_socket: int = 0  # >0: a client reconnects after this many turns (new socket)
    # Warm runs: client i starts i/concurrency * stagger_s after the barrier, so paced
    # streams are spread evenly in phase instead of all 1,000 emitting in the same instant.
    stagger_s: float = 0.0
    # Tool loops: bytes of the function_call_output sent back in the continuation.
    output_bytes: int = 2
    # >0: open loop, each socket starts a turn every period_s (think time fills the rest),
    # so with stagger_s = period_s the turns of all sockets are spread evenly in time and
    # a relay sees one at a time: TTFT without queueing behind other sockets' turns.
    period_s: float = 0.0


# Requests go out as the Codex CLI serializes them: compact JSON, "type" first.
_COMPACT = (",", ":")
TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float:
    """On-CPU time of a process (all threads): /proc/<pid>/schedstat in ns when the kernel
    has it, else utime+stime from /proc/<pid>/stat in clock ticks."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK


def pin(pid: int, cpu: int) -> None:
    count = os.cpu_count() or 1
    if hasattr(os, "sched_setaffinity") and count > cpu:
        os.sched_setaffinity(pid, {cpu})


async def _client(
    url: str,
    headers: dict[str, str],
    sc: Scenario,
    out: dict[str, Any],
    barrier: asyncio.Barrier | None,
    start_delay: float,
) -> None:
    if sc.turns_per_socket <= 0:
        await _socket(url, headers, sc, sc.turns, out, barrier, start_delay)
        return
    turns = sc.turns
    while turns > 0:  # a client that reconnects: fresh sockets, same traffic
        batch = min(sc.turns_per_socket, turns)
        try:
            await _socket(url, headers, sc, batch, out, None, 0.0)
        except Exception as exc:  # e.g. a refused handshake: a client-visible failure
            out["connect_failures"] += 1
            out["failure_samples"].append(repr(exc)[:200])
        turns -= batch


async def _socket(
    url: str,
    headers: dict[str, str],
    sc: Scenario,
    turns: int,
    out: dict[str, Any],
    barrier: asyncio.Barrier | None,
    start_delay: float,
) -> None:
    from websockets.asyncio.client import connect

    out["sockets_opened"] = out.get("sockets_opened", 0) + 1
    async with connect(
        url, additional_headers=headers, max_size=None, ping_interval=None, open_timeout=30
    ) as ws:
        if barrier is not None:
            scratch: dict[str, Any] = {
                "lat": [],
                "ttft": [],
                "turn": [],
                "events": 0,
                "turns": 0,
                "errors": 0,
            }
            await _turns(ws, 1, "warm [[sim deltas=1]]", scratch, 2)
            if await barrier.wait() == 0:
                _start_clocks(out)  # the measured part starts now, warm-up excluded
            await asyncio.sleep(start_delay)
        await _turns(ws, turns, sc.prompt, out, sc.output_bytes, sc.period_s)


async def _turns(
    ws: Any, turns: int, prompt: str, out: dict[str, Any], output_bytes: int, period_s: float = 0.0
) -> None:
    output = "ok".ljust(output_bytes, "x")
    loop = asyncio.get_running_loop()
    next_at = loop.time()
    for turn in range(turns):
        if period_s and turn:
            next_at += period_s  # a fixed schedule: a slow turn does not shift the later ones
            await asyncio.sleep(max(0.0, next_at - loop.time()))
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
            },
            separators=_COMPACT,
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
            # the type comes first; LiteLLM re-serializes with a space after the colon
            if '"response.completed"' in frame[:44]:
                out["turns"] += 1
                out["turn"].append(now - sent)
                if '"type":"function_call"' in frame or '"type": "function_call"' in frame:
                    # continue the tool loop once
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
                                    "output": output,
                                }
                            ],
                        },
                        separators=_COMPACT,
                    )
                    sent = time.time_ns()
                    await ws.send(payload)
                    first = True
                    continue
                break
            if frame.startswith(('{"type":"error"', '{"type": "error"')):
                out["errors"] += 1
                break


def _start_clocks(out: dict[str, Any]) -> None:
    """Wall time, this process's CPU and the watched processes' CPU, from now."""
    out["started"] = time.perf_counter()
    out["load_cpu_started"] = time.process_time()
    out["cpu_started"] = {pid: cpu_seconds(pid) for pid in out["cpu_pids"]}


async def _load(
    url: str, headers: dict[str, str], sc: Scenario, cpu_pids: tuple[int, ...] = ()
) -> dict[str, Any]:
    """Runs the scenario; ``cpu_s`` has each of ``cpu_pids``' CPU seconds over the measured
    part (after the warm-up of a warm run, like ``elapsed``)."""
    out: dict[str, Any] = {
        "lat": [],
        "ttft": [],
        "turn": [],
        "events": 0,
        "turns": 0,
        "errors": 0,
        "connect_failures": 0,
        "failure_samples": [],
    }
    barrier = asyncio.Barrier(sc.concurrency) if sc.warm else None
    out["cpu_pids"] = cpu_pids
    _start_clocks(out)  # a warm run starts them again once every socket is warm
    results = await asyncio.gather(
        *(
            _client(url, headers, sc, out, barrier, i / sc.concurrency * sc.stagger_s)
            for i in range(sc.concurrency)
        ),
        return_exceptions=True,
    )
    out["elapsed"] = time.perf_counter() - out.pop("started")
    out["load_cpu_s"] = time.process_time() - out.pop("load_cpu_started")
    cpu_started = out.pop("cpu_started")
    out["cpu_s"] = {str(pid): cpu_seconds(pid) - cpu_started[pid] for pid in out.pop("cpu_pids")}
    crashed = [repr(r)[:200] for r in results if isinstance(r, BaseException)]
    out["crashed_clients"] = len(crashed)
    out["failures"] = (crashed + out.pop("failure_samples"))[:3]
    return out


def _load_process(args: tuple[str, dict[str, str], Scenario, tuple[int, ...]], queue: Any) -> None:
    pin(0, 1)
    import gc

    import uvloop

    # The measuring instrument should not pause: no cyclic GC in the load generator
    # (its garbage goes by refcount; the process lives for one scenario).
    gc.disable()
    queue.put(uvloop.run(_load(*args)))


def run_load(
    url: str,
    headers: dict[str, str],
    sc: Scenario,
    timeout_s: float = 900,
    cpu_pids: tuple[int, ...] = (),
) -> dict[str, Any]:
    """The scenario's raw figures; ``cpu_s`` maps each of ``cpu_pids`` (as a string) to
    its CPU seconds over the measured part."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_load_process, args=((url, headers, sc, cpu_pids), queue))
    proc.start()
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            result: dict[str, Any] = queue.get(timeout=1)
            break
        except Exception:
            if not proc.is_alive() or time.monotonic() > deadline:
                what = f"timed out after {timeout_s:.0f} s" if proc.is_alive() else "died"
                proc.kill()  # a relay that stalls a turn must not leave its clients behind
                proc.join(timeout=10)
                raise RuntimeError(f"load generator {what} (exit {proc.exitcode})") from None
    proc.join(timeout=30)
    return result
