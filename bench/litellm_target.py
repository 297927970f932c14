"""LiteLLM's proxy as a bench target: the peer a user compares the gateway with.

LiteLLM lives in a virtualenv of its own (``.venv-litellm``, ``make bench-litellm-deps``)
so the product's dependencies never change for it. The harness half of this module runs
in the product venv and starts the process half with that venv's interpreter:

    .venv-litellm/bin/python -m bench.litellm_target --port P --upstream http://127.0.0.1:S/v1

The process half imports nothing but the standard library and LiteLLM. It writes a proxy
config (``proxy_config``) and starts the proxy the way its ``litellm`` command does
(uvicorn + uvloop, one worker). The config is its fastest honest one: no database (so no
spend tracking or spend logs), no callbacks or success/failure loggers, message logging
off, log level ERROR (no access log), the bundled model cost map (no fetch at start). The
proxy refuses to start without a master key, so the run uses a random one, checked once
per socket at the handshake.

Clients reach it on ``/v1/responses`` over WebSocket, LiteLLM's Responses WebSocket mode:
it reads the model from the first ``response.create``, dials the provider's
``/v1/responses?model=...`` over WebSocket and forwards frames both ways, decoding each
event (it re-encodes the response ids it passes on).

As shipped, that upstream dial passes an ``ssl`` context even for a ``ws://`` URL, which
the ``websockets`` client rejects, so LiteLLM cannot reach a plain-WebSocket upstream (the
simulator) at all. The process half therefore answers ``None`` for that one look-up, what
LiteLLM's own realtime path does for ``ws://`` (``realtime_ssl_for_url``); it runs once per
upstream dial and changes nothing per event. ``UNPATCHED_ERROR`` is the error without it.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
VENV = REPO_ROOT / ".venv-litellm"
MODEL = "bench"
LABEL = "LiteLLM"  # its column in the report
# What a client sees on its first response.create when the shim is left out.
UNPATCHED_ERROR = (
    'close 1011, reason "Internal server error: ssl argument is incompatible with a ws:// URI"'
)
SHIM = (
    "the upstream dial's ssl argument is None for the ws:// simulator (as shipped it passes an"
    " ssl context, which the websockets client refuses for ws://); once per upstream dial"
)
# Its environment: log level ERROR (no access log), the bundled cost map (no fetch at start).
ENV = {"LITELLM_LOG": "ERROR", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}


def python() -> Path:
    return VENV / "bin" / "python"


def installed() -> bool:
    return python().exists()


def version() -> str | None:
    """The installed LiteLLM version, or None when the venv or the package is missing."""
    if not installed():
        return None
    probe = "from importlib.metadata import version; print(version('litellm'))"
    done = subprocess.run(
        [str(python()), "-c", probe], capture_output=True, text=True, check=False, timeout=120
    )
    return (done.stdout.strip() or None) if done.returncode == 0 else None


def prepare(install: bool) -> dict[str, Any]:
    """What the report says about the LiteLLM column before anything runs. ``install``
    (BENCH_LITELLM=1) runs ``make bench-litellm-deps`` first when the venv is missing."""
    info: dict[str, Any] = {"settings": settings(), "shim": SHIM}
    if not installed() and install:
        subprocess.run(["make", "-s", "bench-litellm-deps"], cwd=REPO_ROOT, check=False)
    info["version"] = version()
    info["status"] = "installed" if info["version"] else "not installed"
    return info


@dataclass
class Peer:
    """A started (maybe not yet listening) LiteLLM proxy."""

    proc: Any  # tests.support.ManagedProcess
    port: int
    master_key: str

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/responses"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.master_key}"}

    def ready(self, timeout: float = 180.0) -> int:
        """Wait until it listens (its start takes tens of seconds); its pid."""
        from tests.support import wait_for_port

        wait_for_port("127.0.0.1", self.port, timeout=timeout, proc=self.proc.proc)
        return int(self.proc.proc.pid)


def start(upstream_base: str) -> Peer:
    """Start the proxy without waiting for it, so its slow start overlaps the others'."""
    from tests.support import ManagedProcess, free_port

    port, key = free_port(), f"sk-{secrets.token_hex(32)}"
    proc = ManagedProcess(command(port, upstream_base), env={"LITELLM_MASTER_KEY": key}).start()
    return Peer(proc, port, key)


def command(port: int, upstream_base: str) -> list[str]:
    return [
        str(python()),
        "-m",
        "bench.litellm_target",
        "--port",
        str(port),
        "--upstream",
        upstream_base,
    ]


def proxy_config(upstream_base: str, master_key: str) -> dict[str, Any]:
    """One model, ``bench`` -> ``openai/bench`` at the simulator; no database (so no spend
    tracking), no callbacks, no message or spend or error logs."""
    return {
        "model_list": [
            {
                "model_name": MODEL,
                "litellm_params": {
                    "model": f"openai/{MODEL}",
                    "api_base": upstream_base,
                    "api_key": "sk-sim-a",
                },
            }
        ],
        "litellm_settings": {
            "callbacks": [],
            "success_callback": [],
            "failure_callback": [],
            "turn_off_message_logging": True,
            "set_verbose": False,
            "json_logs": False,
        },
        "general_settings": {
            "master_key": master_key,
            "disable_spend_logs": True,
            "disable_error_logs": True,
        },
    }


def settings() -> dict[str, str]:
    """The config the report describes: the one ``main`` writes, the key left out."""
    config = proxy_config("http://simulator/v1", "(random)")
    return {
        "litellm_settings": f"`{json.dumps(config['litellm_settings'])}`",
        "general_settings": f"`{json.dumps(config['general_settings'])}`, no `database_url`",
        "environment": f"`{json.dumps(ENV)}`",
        "server": "the `litellm` command's own start (uvicorn, uvloop, 1 worker)",
    }


def _plain_ws_shim() -> None:
    """No ssl argument for the upstream dial (the simulator is ``ws://``)."""
    from litellm.llms.custom_httpx import llm_http_handler  # type: ignore[import-not-found]

    llm_http_handler.get_shared_realtime_ssl_context = lambda: None


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.litellm_target")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="the simulator's http://host:port/v1")
    parser.add_argument("--master-key", default=os.environ.get("LITELLM_MASTER_KEY", ""))
    parser.add_argument("--unpatched", action="store_true", help="leave the ws:// dial as shipped")
    args = parser.parse_args()
    key = args.master_key or f"sk-{secrets.token_hex(32)}"
    os.environ.update(ENV, LITELLM_MASTER_KEY=key)
    if not args.unpatched:
        _plain_ws_shim()
    from litellm.proxy.proxy_cli import run_server  # type: ignore[import-not-found]

    with tempfile.TemporaryDirectory(prefix="bench-litellm-") as workdir:
        config = Path(workdir) / "config.yaml"  # JSON is YAML
        config.write_text(json.dumps(proxy_config(args.upstream, key), indent=2))
        host, port = "127.0.0.1", str(args.port)
        sys.argv = ["litellm", "--config", str(config), "--host", host, "--port", port]
        run_server()


if __name__ == "__main__":
    main()
