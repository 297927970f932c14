"""``python -m sim --host 127.0.0.1 --port 9090 [--keys k1,k2] [--timestamps]``."""

from __future__ import annotations

import argparse

import uvicorn
from uvicorn.config import WS_PROTOCOLS

from sim.app import create_sim_app
from sim.core import SimConfig

WS_MAX_SIZE = 16 * 1024 * 1024


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m sim", description="Responses API upstream simulator"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9090)
    parser.add_argument(
        "--keys", default="", help="comma-separated account keys (default: any non-empty key)"
    )
    parser.add_argument("--timestamps", action="store_true", help="add sim_t_ns to every event")
    parser.add_argument(
        "--max-conn-age-s", type=float, default=3600.0, help="per-socket age cap (real: 60 min)"
    )
    parser.add_argument("--seed", type=int, default=1234, help="seed for probabilistic faults")
    parser.add_argument("--deflate", action="store_true", help="negotiate permessage-deflate")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args()
    config = SimConfig(
        keys=tuple(k.strip() for k in args.keys.split(",") if k.strip()),
        timestamps=args.timestamps,
        max_conn_age_s=args.max_conn_age_s,
        seed=args.seed,
    )
    uvicorn.run(
        create_sim_app(config),
        host=args.host,
        port=args.port,
        loop="uvloop",
        ws="websockets-sansio" if "websockets-sansio" in WS_PROTOCOLS else "websockets",
        ws_max_size=WS_MAX_SIZE,
        ws_ping_interval=None,  # the real API does not ping; clients do
        ws_per_message_deflate=args.deflate,
        log_level=args.log_level,
        access_log=False,
        backlog=4096,
    )


if __name__ == "__main__":
    main()
