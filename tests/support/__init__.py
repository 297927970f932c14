"""Shared test support: free ports, a private redis-server, managed child processes,
and waiting without sleep-and-hope (``eventually``, ``FakeClock``).

Everything here starts real components on loopback with free ports and temp dirs, so
tests stay parallel-safe and never touch the machine's own Redis on 6379.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.timing import FakeClock, eventually

__all__ = [
    "REPO_ROOT",
    "FakeClock",
    "ManagedProcess",
    "RedisServer",
    "eventually",
    "free_port",
    "python_module",
    "toml_dumps",
    "unique_prefix",
    "wait_for_port",
]

REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def unique_prefix(label: str = "t") -> str:
    return f"{label}-{uuid.uuid4().hex[:12]}"


def wait_for_port(
    host: str, port: int, timeout: float = 15.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Poll until something accepts on host:port; fail fast if proc exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


def stop_redis(proc: subprocess.Popen[bytes] | None, workdir: str) -> None:
    """End a redis-server even while it is SIGSTOPped (a test's partition), then its dir."""
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGCONT)
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    if workdir:
        shutil.rmtree(workdir, ignore_errors=True)


def _redis_server_binary() -> str:
    found = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None
    )
    if found is None:
        raise RuntimeError(
            "redis-server is not installed; run `make test` (it installs it) or apt-get install redis-server"
        )
    return found


@dataclass
class RedisServer:
    """A private redis-server on a free loopback port, in its own temp dir."""

    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    workdir: str = ""

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.port = self.port or free_port()
        self.workdir = tempfile.mkdtemp(prefix="gw-redis-")
        self.proc = subprocess.Popen(
            [
                _redis_server_binary(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.workdir,
                "--protected-mode",
                "no",
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port("127.0.0.1", self.port, proc=self.proc)
        return self

    def pause(self) -> None:
        """SIGSTOP: the server keeps its socket but answers nothing (a partition)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        stop_redis(self.proc, self.workdir)


@dataclass
class ManagedProcess:
    """A child process (uvicorn, the simulator, nginx) with its output captured to a file."""

    args: Sequence[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: str = str(REPO_ROOT)
    proc: subprocess.Popen[bytes] | None = None
    log_path: str = ""

    def start(self, wait_port: int | None = None, timeout: float = 20.0) -> ManagedProcess:
        fd, self.log_path = tempfile.mkstemp(prefix="gw-proc-", suffix=".log")
        env = {**os.environ, **self.env}
        env.setdefault("PYTHONUNBUFFERED", "1")
        self.proc = subprocess.Popen(
            list(self.args),
            cwd=self.cwd,
            env=env,
            stdout=fd,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        os.close(fd)
        if wait_port is not None:
            try:
                wait_for_port("127.0.0.1", wait_port, timeout=timeout, proc=self.proc)
            except Exception:
                raise RuntimeError(f"{self.args[:3]} did not start:\n{self.output()}") from None
        return self

    def output(self) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")
        except OSError:
            return ""

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def toml_dumps(doc: dict[str, object]) -> str:
    """Tiny TOML writer for generated test configs: tables and arrays of tables."""
    lines: list[str] = []
    for section, body in doc.items():
        if isinstance(body, list):
            for entry in body:
                lines.append(f"[[{section}]]")
                lines.extend(f"{k} = {_toml_value(v)}" for k, v in entry.items())
                lines.append("")
        elif isinstance(body, dict):
            lines.append(f"[{section}]")
            lines.extend(f"{k} = {_toml_value(v)}" for k, v in body.items())
            lines.append("")
    return "\n".join(lines)
