"""uvicorn server with a draining shutdown, for one process or ``--workers N``."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
from socket import socket
from types import FrameType

import uvicorn
from uvicorn.supervisors import multiprocess

from gateway.config import load_config

# prometheus-client's multiprocess directory variable (read when a worker imports it).
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

log = logging.getLogger("gateway.server")


class DrainingServer(uvicorn.Server):
    """uvicorn.Server whose first SIGTERM/SIGINT drains turns before shutting down.

    uvicorn's own shutdown closes WebSockets with 1012 at once; we first fail /readyz,
    refuse new sockets and turns, wait for in-flight turns up to the drain timeout,
    close clients with the configured code, and only then let uvicorn exit. A second
    signal exits at once.
    """

    _drain_task: asyncio.Task[None] | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        gateway = _find_gateway(getattr(self.config, "loaded_app", None))
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
    for _ in range(10):
        if app is None:
            return None
        state = getattr(app, "state", None)
        if state is not None and hasattr(state, "gateway"):
            return state.gateway  # type: ignore[no-any-return]
        app = getattr(app, "app", None)
    return None


class DrainingProcess(multiprocess.Process):
    """A uvicorn worker process that runs DrainingServer."""

    @property
    def server(self) -> uvicorn.Server:
        if self._server is None:
            self._server = DrainingServer(config=self.config)
        return self._server


def build_uvicorn_config(
    config_path: str, host: str, port: int, workers: int, *, log_level: str | None = None
) -> uvicorn.Config:
    """Validate the config here, in the parent, so a bad one fails before any worker starts.

    The app factory reads the same file again in each worker through GATEWAY_CONFIG; an
    empty path means the packaged example config.
    """
    cfg = load_config(config_path or None)
    if config_path:
        os.environ["GATEWAY_CONFIG"] = config_path
    else:
        os.environ.pop("GATEWAY_CONFIG", None)
    if log_level:
        os.environ["GATEWAY_LOG_LEVEL"] = log_level
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
        timeout_graceful_shutdown=max(1, int(cfg.server.drain_timeout_s)),
        proxy_headers=cfg.server.trust_forwarded_headers,
        # Trusting forwarded headers means trusting whoever connects (the load balancer).
        forwarded_allow_ips="*" if cfg.server.trust_forwarded_headers else None,
    )


def serve(config: uvicorn.Config, workers: int) -> None:
    if workers <= 1:
        DrainingServer(config).run()
        return
    # Worker processes share one listening socket; each drains on SIGTERM. They inherit
    # this environment: a fresh metrics directory that /metrics aggregates, and the
    # marker that makes each worker put its pid in its connection ids.
    metrics_dir = tempfile.mkdtemp(prefix="gateway-metrics-")
    os.environ[MULTIPROC_ENV] = metrics_dir
    os.environ["GATEWAY_WORKER_MODE"] = "multi"
    multiprocess.Process = DrainingProcess  # type: ignore[misc]
    sock: socket = config.bind_socket()
    try:
        multiprocess.Multiprocess(config, sockets=[sock]).run()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
