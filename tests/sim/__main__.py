"""``python -m tests.sim --host 127.0.0.1 --port 9090 [--keys k1,k2] [--timestamps]``."""

from __future__ import annotations

import argparse

import uvicorn

from tests.sim.app import SimConfig, create_sim_app


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tests.sim", description="Responses API upstream simulator"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9090)
    parser.add_argument(
        "--keys", default="", help="comma-separated account keys (default: any non-empty key)"
    )
    parser.add_argument("--timestamps", action="store_true", help="add sim_t_ns to every event")
    args = parser.parse_args()
    keys = tuple(k for k in args.keys.split(",") if k)
    app = create_sim_app(SimConfig(keys=keys, timestamps=args.timestamps))
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        loop="uvloop",
        ws="websockets-sansio",
        ws_max_size=16 * 1024 * 1024,
        ws_ping_interval=None,
        ws_per_message_deflate=False,
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
