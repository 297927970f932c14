"""``python -m gateway`` / ``responses-gateway``: run the gateway, or check a config."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from importlib import metadata

from gateway.config import ConfigError, config_source, load_config

DIST_NAME = "responses-ws-gateway"
LOG_LEVELS = ("debug", "info", "warning", "error")


def gateway_version() -> str:
    try:
        return metadata.version(DIST_NAME)
    except metadata.PackageNotFoundError:
        return "0+unknown"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value}")
    return value


def _port(text: str) -> int:
    value = _positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"not a TCP port: {value}")
    return value


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    # Environment defaults are kept as text so a bad PORT is reported like a bad --port
    # (argparse converts string defaults through the option's type), never a traceback.
    parser = argparse.ArgumentParser(
        prog="responses-gateway",
        description="Gateway for the OpenAI Responses API in WebSocket mode.",
        epilog="Configuration reference: the packaged example config (`--print-example-config`).",
    )
    parser.add_argument(
        "--config",
        default=env.get("GATEWAY_CONFIG", ""),
        help="TOML config file (env GATEWAY_CONFIG; default: the packaged example config)",
    )
    parser.add_argument(
        "--host",
        default=env.get("HOST", "127.0.0.1"),
        help="address to listen on (env HOST; default 127.0.0.1)",
    )
    parser.add_argument(
        "--port",
        type=_port,
        default=env.get("PORT", "8080"),
        help="TCP port to listen on (env PORT; default 8080)",
    )
    parser.add_argument(
        "--workers",
        type=_positive_int,
        default=env.get("WEB_CONCURRENCY", "1"),
        help="worker processes sharing the port; /metrics sums them (env WEB_CONCURRENCY; default 1)",
    )
    parser.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default=None,
        help="override telemetry.log_level from the config",
    )
    parser.add_argument(
        "--check-config",
        action="store_true",
        help="validate the config (and its *_env secrets), print a summary, exit 0 or 2",
    )
    parser.add_argument(
        "--print-example-config",
        action="store_true",
        help="print the packaged example config (every key with its default) and exit",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {gateway_version()}")
    return parser


def main(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    args = build_parser(os.environ if env is None else env).parse_args(argv)
    if args.print_example_config:
        from gateway.config import example_config_text

        sys.stdout.write(example_config_text().decode())
        return 0
    if args.check_config:
        try:
            cfg = load_config(args.config or None)
        except ConfigError as exc:
            print(f"gateway: {exc}", file=sys.stderr)
            return 2
        from gateway.logs import startup_summary

        source = config_source(args.config or None) or "packaged example config"
        print(f"config OK: {source}")
        for key, value in startup_summary(cfg).items():
            print(f"  {key}: {value}")
        return 0
    from gateway.server import build_uvicorn_config, serve

    try:
        config = build_uvicorn_config(
            args.config, args.host, args.port, args.workers, log_level=args.log_level
        )
    except ConfigError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    serve(config, args.workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
