"""uvicorn server for one process or ``--workers N``; the app drains on SIGTERM."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from socket import socket

import uvicorn
from uvicorn.supervisors import multiprocess

from gateway.config import load_config

# prometheus-client's multiprocess directory variable (read when a worker imports it).
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

log = logging.getLogger("gateway.server")


class DrainingServer(uvicorn.Server):
    """The uvicorn server we run. Draining on SIGTERM/SIGINT is not done here but by the
    app's lifespan (``gateway.drain``), so it works under the plain uvicorn CLI as well."""


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
