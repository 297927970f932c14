"""``python -m gateway --config FILE [--host H --port P --workers N]``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from types import FrameType

import uvicorn
from uvicorn.supervisors import Multiprocess

from gateway.config import ConfigError, load_config

log = logging.getLogger("gateway.server")


class DrainingServer(uvicorn.Server):
    """uvicorn.Server whose first SIGTERM/SIGINT drains turns before shutting down (R-26).

    uvicorn's own shutdown closes WebSockets with 1012 at once; we first fail /readyz,
    refuse new sockets and turns, wait for in-flight turns up to the drain timeout,
    close clients with the configured code, and only then let uvicorn exit.
    """

    _drain_task: asyncio.Task[None] | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        app = getattr(self.config, "loaded_app", None)
        gateway = _find_gateway(app)
        if gateway is None or self._drain_task is not None or self.should_exit:
            super().handle_exit(sig, frame)
            return
        loop = asyncio.get_event_loop()
        loop.call_soon_threadsafe(self._start_drain, gateway)

    def _start_drain(self, gateway: object) -> None:
        self._drain_task = asyncio.get_event_loop().create_task(self._drain(gateway))

    async def _drain(self, gateway: object) -> None:
        server_cfg = gateway.ctx.cfg.server  # type: ignore[attr-defined]
        log.info(
            "draining", extra={"event": "drain_start", "timeout_s": server_cfg.drain_timeout_s}
        )
        try:
            await gateway.drain(server_cfg.drain_timeout_s, server_cfg.drain_close_code)  # type: ignore[attr-defined]
        finally:
            self.should_exit = True


def _find_gateway(app: object) -> object | None:
    # uvicorn wraps the app in middleware; walk down to the Starlette app.
    seen = 0
    while app is not None and seen < 10:
        state = getattr(app, "state", None)
        if state is not None and hasattr(state, "gateway"):
            return state.gateway  # type: ignore[no-any-return]
        app = getattr(app, "app", None)
        seen += 1
    return None


def build_uvicorn_config(config_path: str, host: str, port: int, workers: int) -> uvicorn.Config:
    cfg = load_config(config_path)
    os.environ["GATEWAY_CONFIG"] = config_path
    return uvicorn.Config(
        "gateway.app:create_app",
        factory=True,
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        ws=cfg.server.ws_impl,
        ws_max_size=cfg.server.max_message_bytes,
        ws_per_message_deflate=False,
        ws_ping_interval=None,
        ws_ping_timeout=None,
        lifespan="on",
        workers=workers,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=max(1.0, cfg.server.drain_timeout_s),
        proxy_headers=cfg.server.trust_forwarded_headers,
    )


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
    if args.workers <= 1:
        DrainingServer(config).run()
        return 0
    # Several worker processes share one listening socket; each drains on SIGTERM.
    sock = config.bind_socket()
    sock.set_inheritable(True)
    supervisor = Multiprocess(config, target=DrainingServer(config).run, sockets=[sock])
    supervisor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
