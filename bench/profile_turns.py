"""Profile the ctx_pool hot path in-process: cProfile top costs and tracemalloc
allocations/bytes per turn.

    .venv/bin/python -m bench.profile_turns [--turns 300]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import tracemalloc

import msgspec
import uvicorn

from gateway.app import build_app
from gateway.config import Config
from tests.e2e.client import create, open_ws, turn
from tests.e2e.harness import auth_headers, gateway_config, run_sim
from tests.support import free_port, toml_dumps


async def drive(url: str, turns: int) -> int:
    ws = await open_ws(url, auth_headers())
    events = 0
    try:
        for _ in range(turns):
            events += len(await turn(ws, create("profile [[sim deltas=50]]")))
    finally:
        await ws.close()
    return events


async def main_async(turns: int) -> None:
    with run_sim() as sim:
        cfg = msgspec.toml.decode(
            toml_dumps(
                gateway_config(sim.base_url, overrides={"telemetry": {"log_level": "warning"}})
            ),
            type=Config,
        )
        app = build_app(cfg)
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(
                app,
                host="127.0.0.1",
                port=port,
                lifespan="on",
                log_config=None,
                ws="websockets-sansio",
            )
        )
        task = asyncio.create_task(server.serve())
        while not server.started:  # uvicorn exposes no startup event to await
            assert not task.done(), "in-process gateway failed to start"
            await asyncio.sleep(0.01)
        url = f"ws://127.0.0.1:{port}/v1/responses"
        await drive(url, 20)  # warm: socket dialed, caches filled

        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        await drive(url, turns)
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        stats = after.compare_to(before, "filename")
        # Both the gateway and the in-process test client run here: count gateway files only.
        gw = [
            s
            for s in stats
            if any(
                part in (s.traceback[0].filename or "")
                for part in ("/gateway/", "/normalizer/", "/pool/", "/statestore/")
            )
        ]
        allocs = sum(s.count_diff for s in gw)
        size = sum(s.size_diff for s in gw)
        print(
            f"retained by gateway code after {turns} turns: {allocs / turns:+.1f} blocks/turn, {size / turns:+.0f} B/turn (net, tracemalloc)"
        )

        profiler = cProfile.Profile()
        profiler.enable()
        events = await drive(url, turns)
        profiler.disable()
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(14)
        print(
            f"{turns} turns, {events} events in the profile (client and server share this process)"
        )
        print(out.getvalue())
        server.should_exit = True
        await task


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--turns", type=int, default=300)
    args = parser.parse_args()
    asyncio.run(main_async(args.turns))


if __name__ == "__main__":
    main()
