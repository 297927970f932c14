"""A relay hosted in-process with a control socket, for allocation and CPU-profile runs.

    python -m bench.inproc --app gateway --config FILE --port P --control-port C
    python -m bench.inproc --app floor --upstream ws://... --port P --control-port C

The relay (the gateway app from ``gateway.app.build_app`` with the same uvicorn settings
``python -m gateway`` uses, or the floor relay) runs under ``uvicorn.Server`` in this
process; the load comes from elsewhere, so whatever tracemalloc or cProfile sees here is
the relay's own work. The control socket takes one command per line and answers one
JSON line:

    alloc_start            gc, start tracemalloc, baseline snapshot, reset the peak
    alloc_stop             snapshot diff since alloc_start: net blocks/bytes retained,
                           peak traced bytes above the baseline, top retaining sites
    profile_start          start cProfile
    profile_stop [N]       stop it; the N (default 15) costliest functions by own time
    stages_start [bare|frame]
                           time every stage of the ctx_pool turns from now (bench/stages.py);
                           bare: only the turn's entry → upstream write, nothing between;
                           frame: only the frame's arrival → upstream write (any relay)
    stages_stop            p50 per stage, continuation turns and all turns
    quit                   stop the server
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import os
import pstats
import site
import sysconfig
import tracemalloc
from pathlib import Path
from typing import Any

import uvicorn
import uvloop

from bench.stages import StageProbe

REPO_ROOT = Path(__file__).resolve().parent.parent


class Probe:
    """tracemalloc and cProfile around a batch of turns, driven by control commands."""

    def __init__(self) -> None:
        self._baseline: tracemalloc.Snapshot | None = None
        self._baseline_bytes = 0
        self._profiler: cProfile.Profile | None = None

    def alloc_start(self) -> dict[str, Any]:
        gc.collect()
        tracemalloc.start(1)
        self._baseline = tracemalloc.take_snapshot()
        self._baseline_bytes = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        return {"ok": True}

    def alloc_stop(self) -> dict[str, Any]:
        if self._baseline is None:
            return {"ok": False, "error": "alloc_start first"}
        _, peak = tracemalloc.get_traced_memory()
        gc.collect()  # count what is really retained, not cycles awaiting collection
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        ignore = [tracemalloc.Filter(False, tracemalloc.__file__)]
        stats = after.filter_traces(ignore).compare_to(
            self._baseline.filter_traces(ignore), "lineno"
        )
        self._baseline = None
        top = [
            {
                "site": f"{_short(s.traceback[0].filename)}:{s.traceback[0].lineno}",
                "bytes": s.size_diff,
                "blocks": s.count_diff,
            }
            for s in sorted(stats, key=lambda s: -s.size_diff)[:8]
        ]
        return {
            "ok": True,
            "net_blocks": sum(s.count_diff for s in stats),
            "net_bytes": sum(s.size_diff for s in stats),
            "peak_bytes_above_baseline": peak - self._baseline_bytes,
            "top_retained": top,
        }

    def profile_start(self) -> dict[str, Any]:
        self._profiler = cProfile.Profile()
        self._profiler.enable()
        return {"ok": True}

    def profile_stop(self, limit: int) -> dict[str, Any]:
        if self._profiler is None:
            return {"ok": False, "error": "profile_start first"}
        self._profiler.disable()
        stats = pstats.Stats(self._profiler)
        self._profiler = None
        rows: list[dict[str, Any]] = []
        total = 0.0
        raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
        for (filename, line, func), (_cc, calls, tottime, cumtime, _callers) in raw.items():
            total += tottime
            rows.append(
                {
                    "function": f"{_short(filename)}:{line}({func})",
                    "calls": calls,
                    "tottime_s": tottime,
                    "cumtime_s": cumtime,
                }
            )
        rows.sort(key=lambda r: -float(r["tottime_s"]))
        for row in rows:
            row["share_pct"] = 100 * row["tottime_s"] / total if total else 0.0
        return {"ok": True, "total_s": total, "top": rows[:limit]}


def _short(filename: str) -> str:
    """A path relative to the checkout, site-packages or the standard library."""
    for prefix in (str(REPO_ROOT) + os.sep, *site.getsitepackages(), sysconfig.get_path("stdlib")):
        if filename.startswith(prefix):
            return filename[len(prefix) :].lstrip(os.sep)
    return filename


async def _control(probe: Probe, server: uvicorn.Server, port: int) -> asyncio.Server:
    stages = StageProbe()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := (await reader.readline()).decode().split():
            command, args = line[0], line[1:]
            if command == "alloc_start":
                reply = probe.alloc_start()
            elif command == "alloc_stop":
                reply = probe.alloc_stop()
            elif command == "profile_start":
                reply = probe.profile_start()
            elif command == "profile_stop":
                reply = probe.profile_stop(int(args[0]) if args else 15)
            elif command == "stages_start":
                reply = stages.start(bare=args == ["bare"], frame_only=args == ["frame"])
            elif command == "stages_stop":
                reply = stages.stop()
            elif command == "quit":
                server.should_exit = True
                reply = {"ok": True}
            else:
                reply = {"ok": False, "error": f"unknown command {command!r}"}
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", port)


def _uvicorn_config(args: argparse.Namespace) -> uvicorn.Config:
    if args.app == "gateway":
        from gateway.app import create_app
        from gateway.config import load_config
        from gateway.server import build_uvicorn_config

        cfg = load_config(args.config)
        # The production settings (http, ws impl, limits) and the app as its factory
        # makes it (logging, the ingress patches), as an object instead of the factory
        # string, so it lives in this process under our probes.
        config = build_uvicorn_config(args.config, "127.0.0.1", args.port, 1)
        config.app = create_app(cfg)
        config.factory = False
        return config
    from bench.floor_relay import build, uvicorn_kwargs

    return uvicorn.Config(build(args.upstream, args.key), port=args.port, **uvicorn_kwargs())


async def _serve(args: argparse.Namespace) -> None:
    server = uvicorn.Server(_uvicorn_config(args))
    control = await _control(Probe(), server, args.control_port)
    try:
        await server.serve()
    finally:
        control.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.inproc")
    parser.add_argument("--app", choices=("gateway", "floor"), required=True)
    parser.add_argument("--config", help="gateway TOML (--app gateway)")
    parser.add_argument("--upstream", help="simulator ws:// URL (--app floor)")
    parser.add_argument("--key", default="sk-sim-a")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--control-port", type=int, required=True)
    uvloop.run(_serve(parser.parse_args()))


if __name__ == "__main__":
    main()
