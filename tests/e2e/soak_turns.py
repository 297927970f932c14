"""Many back-to-back turns through one gateway process, with no ``/metrics`` scrape until
the end: does per-socket bookkeeping stay bounded, and does the process's memory stay flat?

    python -m tests.e2e.soak_turns --turns 40000 --sockets 20

Starts the simulator, a redis-server and a gateway (Redis store) as real processes, runs
the turns (each ``response.create`` sent the instant the previous terminal arrives), and
prints the gateway's RSS every ``--every`` turns, then one scrape's bookkeeping gauges.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.e2e.client import create, open_ws, read_turn, response_id
from tests.e2e.harness import GatewayProcess, auth_headers, gateway_config, run_gateway, run_sim
from tests.support import RedisServer


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def scrape(text: str, name: str, label: str = "") -> float:
    """The sum of a metric's samples, those whose labels contain ``label`` if given."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if label in line:
                total += float(line.rsplit(" ", 1)[1])
    return total


@dataclass
class SoakResult:
    turns: int = 0
    failed: int = 0
    rss_curve: list[tuple[int, int]] = field(default_factory=list)
    holding: float = 0.0
    upstream_sockets: float = 0.0


async def soak(
    gw: GatewayProcess, turns: int, sockets: int, every: int, conversation_turns: int = 0
) -> SoakResult:
    assert gw.proc.proc is not None
    pid = gw.proc.proc.pid
    result = SoakResult()
    result.rss_curve.append((0, rss_kib(pid)))
    per_socket = turns // sockets

    async def chain() -> None:
        ws = await open_ws(gw.ws_url, auth_headers())
        previous: str | None = None
        try:
            for index in range(per_socket):
                if conversation_turns and index and index % conversation_turns == 0:
                    # A new conversation on a new socket, as an agent starts a new task.
                    await ws.close()
                    ws = await open_ws(gw.ws_url, auth_headers())
                    previous = None
                extra = {} if previous is None else {"previous_response_id": previous}
                await ws.send(create(f"turn {index}", **extra))
                events = await read_turn(ws)
                ok = events[-1]["type"] == "response.completed"
                previous = response_id(events) if ok else None
                result.failed += not ok
                result.turns += 1
                if result.turns % every == 0:
                    result.rss_curve.append((result.turns, rss_kib(pid)))
        finally:
            await ws.close()

    await asyncio.gather(*(chain() for _ in range(sockets)))
    async with httpx.AsyncClient(base_url=gw.http_url) as client:
        text = (await client.get("/metrics")).text
    result.holding = scrape(text, "gateway_upstream_sockets_holding_response")
    result.upstream_sockets = scrape(text, "gateway_pool_connections", 'state="idle"') + scrape(
        text, "gateway_pool_connections", 'state="leased"'
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--turns", type=int, default=40_000)
    parser.add_argument("--sockets", type=int, default=20)
    parser.add_argument("--every", type=int, default=5_000)
    parser.add_argument("--max-idle", type=int, default=4, help="small: upstream sockets churn")
    parser.add_argument(
        "--conversation-turns", type=int, default=200, help="turns per conversation (socket)"
    )
    parser.add_argument(
        "--cache-entries", type=int, default=8192, help="statestore hot cache bound"
    )
    args = parser.parse_args()
    redis = RedisServer().start()
    try:
        with run_sim() as sim:
            cfg = gateway_config(
                sim.base_url,
                statestore_url=redis.url,
                overrides={
                    "openai_ws": {"max_idle_per_account": args.max_idle},
                    "statestore": {"url": redis.url, "cache_max_entries": args.cache_entries},
                },
            )
            with run_gateway(cfg) as gw:
                result = asyncio.run(
                    soak(gw, args.turns, args.sockets, args.every, args.conversation_turns)
                )
    finally:
        redis.stop()
    print(json.dumps(result.__dict__, indent=1))


if __name__ == "__main__":
    main()
