"""uvicorn server for one process or ``--workers N``; the app drains on SIGTERM."""

from __future__ import annotations

import logging
import os
from socket import socket

import uvicorn
from uvicorn.supervisors import multiprocess

from gateway.config import load_config

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
        timeout_graceful_shutdown=max(1, int(cfg.server.drain_timeout_s)),
        proxy_headers=cfg.server.trust_forwarded_headers,
    )


def serve(config: uvicorn.Config, workers: int) -> None:
    if workers <= 1:
        DrainingServer(config).run()
        return
    # Worker processes share one listening socket; each drains on SIGTERM.
    multiprocess.Process = DrainingProcess  # type: ignore[misc]
    sock: socket = config.bind_socket()
    multiprocess.Multiprocess(config, sockets=[sock]).run()
