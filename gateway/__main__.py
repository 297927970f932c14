"""``python -m gateway --config FILE [--host H --port P --workers N]``."""

from __future__ import annotations

import argparse
import os
import sys

from gateway.config import ConfigError
from gateway.server import build_uvicorn_config, serve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gateway", description="Responses WebSocket gateway"
    )
    parser.add_argument(
        "--config", default=os.environ.get("GATEWAY_CONFIG", "deploy/gateway.example.toml")
    )
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")))
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    try:
        config = build_uvicorn_config(args.config, args.host, args.port, args.workers)
    except ConfigError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    serve(config, args.workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
