"""Drive the real Codex CLI against the simulator, directly or through the gateway.

Codex must reach nothing but loopback, so every scenario runs inside its own user +
network (+ pid) namespace: the test calls :func:`run_scenario`, which spawns
``unshare -rn --pid --fork --mount-proc --kill-child python -m tests.e2e.codex_harness`` with the
scenario JSON on stdin. Inside, :func:`_run_inside` brings ``lo`` up, starts the
simulator (and the gateway unless ``mode == "direct"``) on free ports, runs each Codex
step with a generated ``CODEX_HOME``, and prints one JSON result on stdout: every
step's exit code, stdout and stderr, the simulator's log, and the gateway's output.
The pid namespace makes the kernel kill everything left inside when the runner exits.

Scenario keys (all optional except ``steps``)::

    mode: "gateway" | "direct"          direct = Codex talks to the simulator itself
    gateway_overrides: {section: {k: v}} merged into tests.e2e.harness.gateway_config
    gateway_accounts: int               upstream accounts of the gateway (default 1: acct-a;
                                        2 adds acct-b with the simulator key sk-sim-b)
    faults: [rule, ...]                 SimControl.add_fault(**rule) before the first step
    provider: {k: v}                    extra [model_providers.gw] keys for Codex
    steps: [{"kind": "exec" | "resume", "prompt": str,
             "faults": [rule, ...],     added before this step
             "arm": {"when_in_flight": n, "faults": [rule, ...]}}]
                                        added once >= n non-warm-up requests arrived
                                        and the latest is still streaming
    step_timeout_s: float               per Codex run (default 45)
    rust_log: str                       RUST_LOG for Codex (default shows retries, sockets)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support import REPO_ROOT, toml_dumps

CODEX_VERSION = "0.169.0"
INSTALL_SCRIPT = REPO_ROOT / "scripts" / "install-codex.sh"
CODEX_BINARY = (
    REPO_ROOT
    / ".cache/codex/node_modules/@openai/codex-linux-x64/vendor/x86_64-unknown-linux-musl/bin/codex"
)
RUNS_DIR = REPO_ROOT / ".cache" / "codex-runs"
SIM_ACCOUNT_KEY = "sk-sim-a"  # acct-a's key in tests.e2e.harness.gateway_config
# --pid/--kill-child: the kernel kills whatever is left inside when the runner dies.
# --mount-proc is required with --pid: with the host's /proc, the sandboxed
# exec_command of Codex hangs (its tool call times out after 10 s with no output).
UNSHARE = ["unshare", "-rn", "--pid", "--fork", "--mount-proc", "--kill-child"]
# Codex's default log filter hides its retry warnings ("stream disconnected - retrying
# sampling request"); this shows every WARN plus one INFO line per WebSocket it opens.
DEFAULT_RUST_LOG = "warn,codex_api::endpoint::responses_websocket=info"
WS_CONNECTED = "successfully connected to Responses WebSocket"
RETRY_MARKERS = (
    "retrying sampling request",  # codex_core::responses_retry, any retried stream
    "Reconnecting",  # HTTP transport retry loop
    "Falling back from WebSockets",  # WS retry budget used up
)


# ---------------------------------------------------------------- outside the namespace


def namespace_problem() -> str | None:
    """Why a loopback-only namespace cannot be created here, or None when it can."""
    if shutil.which("unshare") is None:
        return "unshare(1) is not installed"
    if shutil.which("ip") is None:
        return "ip(8) (iproute2) is not installed"
    probe = subprocess.run(
        [*UNSHARE, "sh", "-c", "ip link set lo up && ip -o link show lo"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if probe.returncode != 0 or "UP" not in probe.stdout:
        return f"unshare -rn --pid is not permitted here (rc={probe.returncode}): {probe.stderr.strip()}"
    return None


def run_scenario(scenario: dict[str, Any], timeout_s: float = 240.0) -> dict[str, Any]:
    """Run one scenario in a fresh namespace and return the runner's JSON result."""
    proc = subprocess.run(
        [*UNSHARE, sys.executable, "-m", "tests.e2e.codex_harness"],
        input=json.dumps(scenario),
        capture_output=True,
        text=True,
        cwd=str(REPO_ROOT),
        timeout=timeout_s,
    )
    try:
        result: dict[str, Any] = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise AssertionError(
            f"codex harness printed no JSON (rc={proc.returncode})\n"
            f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
        ) from None
    if result.get("error"):
        raise AssertionError(f"codex harness failed: {result['error']}\n{describe(result)}")
    return result


def describe(result: dict[str, Any]) -> str:
    """Everything useful for an assertion message, trimmed."""
    parts: list[str] = []
    for i, step in enumerate(result.get("steps", [])):
        parts.append(
            f"--- step {i} {step.get('argv', [])[1:3]} exit={step.get('exit_code')}\n"
            f"stdout:\n{step.get('stdout', '')[-3000:]}\nstderr:\n{step.get('stderr', '')[-6000:]}"
        )
    if result.get("gateway_output"):
        parts.append(f"--- gateway output\n{result['gateway_output'][-6000:]}")
    if result.get("sim_output"):
        parts.append(f"--- sim output\n{result['sim_output'][-3000:]}")
    return "\n".join(parts)


# ----------------------------------------------------------------- inside the namespace


def codex_config_toml(base_url: str, provider_extra: dict[str, Any]) -> str:
    """Codex's config.toml: one WS-capable provider, short retry budgets, no analytics."""
    provider: dict[str, Any] = {
        "name": "gw",
        "base_url": base_url,
        "wire_api": "responses",
        "env_key": "GW_KEY",
        "supports_websockets": True,
        "stream_max_retries": 1,
        "request_max_retries": 0,
        "websocket_connect_timeout_ms": 5000,
    }
    provider.update(provider_extra)
    top = (
        'model = "gpt-5.1-codex"\n'
        'model_provider = "gw"\n'
        'approval_policy = "never"\n'
        'sandbox_mode = "read-only"\n'
        "check_for_update_on_startup = false\n\n"
    )
    return top + toml_dumps({"analytics": {"enabled": False}, "model_providers.gw": provider})


def _codex_argv(step: dict[str, Any]) -> list[str]:
    prompt = str(step["prompt"])
    if step.get("kind", "exec") == "resume":
        return [
            str(CODEX_BINARY),
            "exec",
            "--skip-git-repo-check",
            "--strict-config",
            "resume",
            "--last",
            prompt,
        ]
    return [str(CODEX_BINARY), "exec", "--skip-git-repo-check", "--strict-config", prompt]


def _run_codex(
    step: dict[str, Any], env: dict[str, str], workdir: Path, timeout_s: float
) -> dict[str, Any]:
    argv = _codex_argv(step)
    started = time.monotonic()
    try:
        with open(os.devnull, "rb") as devnull:  # else Codex appends stdin to the prompt
            done = subprocess.run(
                argv,
                stdin=devnull,
                capture_output=True,
                text=True,
                env=env,
                cwd=str(workdir),
                timeout=timeout_s,
            )
        code: int | None = done.returncode
        out, err = done.stdout, done.stderr
    except subprocess.TimeoutExpired as exc:
        code = None
        out = _text(exc.stdout)
        err = _text(exc.stderr) + f"\n[harness] codex timed out after {timeout_s}s"
    return {
        "argv": argv,
        "exit_code": code,
        "ws_connects": err.count(WS_CONNECTED),
        "retry_lines": [line for line in err.splitlines() if any(m in line for m in RETRY_MARKERS)],
        "stdout": out,
        "stderr": err,
        "duration_s": round(time.monotonic() - started, 3),
    }


def _text(data: str | bytes | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data


@dataclass
class Services:
    codex_base_url: str
    codex_key: str
    sim_url: str
    cluster: Any = None  # tests.e2e.cluster.Cluster in "cluster" mode
    gateway_url: str = ""  # the single gateway's base URL (gateway mode)


@contextmanager
def _services(scenario: dict[str, Any], result: dict[str, Any]) -> Iterator[Services]:
    """Start the simulator (and the gateway unless mode is direct)."""
    from tests.e2e.harness import CLIENT_KEY, gateway_config, run_gateway, run_sim

    with ExitStack() as stack:
        sim = stack.enter_context(run_sim())
        stack.callback(lambda: result.__setitem__("sim_output", sim.proc.output()))
        sim_url = f"http://127.0.0.1:{sim.port}"
        if scenario.get("mode", "gateway") == "direct":
            yield Services(sim.base_url, SIM_ACCOUNT_KEY, sim_url)
            return
        if scenario.get("mode") == "cluster":
            from tests.e2e.cluster import run_cluster

            cluster = stack.enter_context(run_cluster(sim.base_url, instances=2, accounts=1))
            yield Services(f"{cluster.nginx_url}/v1", CLIENT_KEY, sim_url, cluster)
            return
        cfg = gateway_config(
            sim.base_url,
            accounts=int(scenario.get("gateway_accounts", 1)),
            overrides=scenario.get("gateway_overrides") or {},
        )
        gateway = stack.enter_context(run_gateway(cfg))
        stack.callback(lambda: result.__setitem__("gateway_output", gateway.proc.output()))
        yield Services(f"{gateway.http_url}/v1", CLIENT_KEY, sim_url, gateway_url=gateway.http_url)


class FaultArmer(threading.Thread):
    """Adds fault rules while Codex runs: once n real requests arrived upstream and the
    latest one is still streaming (so the rules hit the requests after it).

    Some faults must hit one specific response (e.g. close the socket right after the
    function-call response, not after the warm-up); the simulator's rules cannot say
    which, so we add them at the right moment. The prompt's ``[[sim delay_ms=...]]``
    keeps that response streaming long enough to be seen in flight.
    """

    def __init__(self, sim_url: str, when_in_flight: int, rules: list[dict[str, Any]]) -> None:
        super().__init__(daemon=True)
        self.sim_url, self.when_in_flight, self.rules = sim_url, when_in_flight, rules
        self.stop = threading.Event()
        self.outcome = "not_armed"

    def run(self) -> None:
        from sim.control import SimControl

        control = SimControl(self.sim_url)
        try:
            while not self.stop.is_set():
                real = [r for r in control.log()["requests"] if r.get("generate") is not False]
                if len(real) >= self.when_in_flight and real[-1]["outcome"] == "in_flight":
                    for rule in self.rules:
                        control.add_fault(**rule)
                    self.outcome = "armed"
                    return
                self.stop.wait(0.01)
        finally:
            control.close()


class RestartArmer(threading.Thread):
    """A rolling-deploy step while Codex works: once the first real request is streaming,
    restart (SIGTERM, drain, start again) the instance that holds Codex's socket."""

    def __init__(self, sim_url: str, cluster: Any) -> None:
        super().__init__(daemon=True)
        self.sim_url, self.cluster = sim_url, cluster
        self.stop = threading.Event()
        self.outcome = "not_armed"

    def run(self) -> None:
        from sim.control import SimControl

        control = SimControl(self.sim_url)
        try:
            while not self.stop.is_set():
                real = [r for r in control.log()["requests"] if r.get("generate") is not False]
                if real and real[-1]["outcome"] == "in_flight":
                    index = max(
                        range(len(self.cluster.instances)),
                        key=lambda i: _gauge(self.cluster.instances[i].http_url),
                    )
                    self.cluster.restart(index)
                    self.outcome = f"restarted {self.cluster.instance_ids[index]}"
                    return
                self.stop.wait(0.01)
        finally:
            control.close()


def _gauge(http_url: str, name: str = "gateway_client_sockets") -> float:
    import httpx

    text = httpx.get(http_url + "/metrics", timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + " ")
    )


def _turns_served(http_url: str) -> float:
    import httpx

    text = httpx.get(http_url + "/metrics", timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("gateway_turns_total{")
    )


def _drain_serving_instance(cluster: Any) -> str:
    """SIGTERM the instance that served the conversation so far; wait for it to exit."""
    import signal as _signal

    served = {
        name: _turns_served(gw.http_url)
        for name, gw in zip(cluster.instance_ids, cluster.instances, strict=True)
    }
    name = max(served, key=lambda n: served[n])
    gw = cluster.instances[cluster.index_of(name)]
    gw.proc.signal(_signal.SIGTERM)
    gw.proc.proc.wait(timeout=30)
    return str(name)


def _run_inside(scenario: dict[str, Any]) -> dict[str, Any]:
    from sim.control import SimControl

    result: dict[str, Any] = {"steps": [], "sim_log": None, "error": None}
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    # Not under /tmp: Codex refuses to create its helper-binary aliases in a temp dir.
    RUNS_DIR.mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="run-", dir=RUNS_DIR))
    try:
        codex_home, workdir = home / "codex-home", home / "work"
        codex_home.mkdir()
        workdir.mkdir()
        with _services(scenario, result) as services:
            control = SimControl(services.sim_url)
            (codex_home / "config.toml").write_text(
                codex_config_toml(services.codex_base_url, scenario.get("provider") or {})
            )
            env = {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "HOME": str(home),
                "CODEX_HOME": str(codex_home),
                "GW_KEY": services.codex_key,
                "TERM": "dumb",
                "NO_COLOR": "1",
                "RUST_LOG": str(scenario.get("rust_log") or DEFAULT_RUST_LOG),
            }
            for rule in scenario.get("faults") or []:
                control.add_fault(**rule)
            timeout_s = float(scenario.get("step_timeout_s", 45))
            for step in scenario["steps"]:
                for rule in step.get("faults") or []:
                    control.add_fault(**rule)
                armer: FaultArmer | RestartArmer | None = None
                if step.get("restart_serving_while_in_flight") and services.cluster is not None:
                    armer = RestartArmer(services.sim_url, services.cluster)
                    armer.start()
                elif step.get("arm"):
                    arm = step["arm"]
                    armer = FaultArmer(
                        services.sim_url, int(arm["when_in_flight"]), list(arm["faults"])
                    )
                    armer.start()
                before = len(control.log()["requests"])
                outcome = _run_codex(step, env, workdir, timeout_s)
                outcome["first_sim_request"] = before  # index into sim_log["requests"]
                if armer is not None:
                    armer.stop.set()
                    armer.join(timeout=5)
                    outcome["arm"] = armer.outcome
                result["steps"].append(outcome)
                if step.get("then_drain_serving_instance") and services.cluster is not None:
                    result["drained_instance"] = _drain_serving_instance(services.cluster)
            if services.cluster is not None:
                import httpx

                result["instance_metrics"] = {
                    name: httpx.get(gw.http_url + "/metrics", timeout=5).text
                    for name, gw in zip(
                        services.cluster.instance_ids, services.cluster.instances, strict=True
                    )
                    if gw.proc.proc is not None and gw.proc.proc.poll() is None
                }
                result["instance_turns"] = {
                    name: _turns_served(gw.http_url)
                    for name, gw in zip(
                        services.cluster.instance_ids, services.cluster.instances, strict=True
                    )
                    if gw.proc.proc is not None and gw.proc.proc.poll() is None
                }
            if services.gateway_url:
                import httpx

                result["gateway_metrics"] = httpx.get(
                    services.gateway_url + "/metrics", timeout=5
                ).text
            result["sim_log"] = control.log()
            control.close()
    except Exception:
        result["error"] = traceback.format_exc()
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return result


def main() -> int:
    scenario = json.loads(sys.stdin.read())
    result = _run_inside(scenario)
    sys.stdout.write(json.dumps(result))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
