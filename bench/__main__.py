"""``make bench`` / ``make bench-quick``: the same scripted traffic through every relay.

    client -> simulator (direct)
    client -> floor (bench/floor_relay.py: Starlette/uvicorn/uvloop + the websockets client,
              sharing no code with the gateway, frames copied with no parsing)
    client -> own-client relay (the floor's ingress on gateway.upstream.ws; full run only)
    client -> gateway passthrough -> simulator
    client -> gateway ctx_pool -> simulator
    client -> LiteLLM proxy -> simulator (bench/litellm_target.py; when .venv-litellm exists)

The relay under test is pinned to CPU 0; the simulator and the load generator (its own
process) to CPU 1. Latency per event is measured on the same events: the simulator
stamps ``sim_t_ns`` just before sending, the client subtracts it on receipt; "added"
is a through-path percentile minus the direct one. CPU per event is the relay
process's CPU time over the run divided by the events it relayed. Then: the per-stage
breakdown of ctx_pool turns (bench/stages.py), the upstream frame layer alone
(bench/frame_layer.py), a fault run per gateway mode (5% failed dials, 2% failed
streams; the gateway's own counters), tracemalloc and cProfile in an in-process host
(bench/inproc.py), pool acquire (bench/pool_bench.py). Output:
bench/results/<date>-<commit>.json (full runs; quick runs write bench/results/quick.json,
untracked), docs/benchmarks.md and the README's numbers block. ``--only SCENARIO`` runs
one scenario and prints its JSON; ``--stages`` prints the stage breakdown alone.
BENCH_LITELLM=1 installs LiteLLM (``make bench-litellm-deps``) when it is missing; without
it the LiteLLM column says "not installed" and the run goes on.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from importlib import metadata
from typing import Any

from bench import litellm_target
from bench.frame_layer import run as frame_layer_run
from bench.load import Scenario, pin, run_load
from bench.probes import (
    LOAD_CPU,
    RELAY_CPU,
    alloc_and_profile,
    bench_gateway_config,
    fault_run,
    stage_breakdown,
)
from bench.report import CPU_ROWS, TTFT_ROWS, markdown, readme_block
from bench.rounds import combine_rounds, round_order
from tests.e2e.harness import SimProcess, auth_headers, run_gateway, run_sim
from tests.support import REPO_ROOT, ManagedProcess, free_port, python_module

RESULTS = REPO_ROOT / "bench" / "results"
DOC = REPO_ROOT / "docs" / "benchmarks.md"
README = REPO_ROOT / "README.md"
QUANTILES = {"p50": 0.5, "p95": 0.95, "p99": 0.99}
# Full runs measure every scenario this many times, relays back to back in each round.
ROUNDS = 3
PEER = litellm_target.LABEL
# LiteLLM runs what the summary tables show: not paced-c1000, whose thousand LiteLLM
# session set-ups would lengthen the run for a row no summary table has
PEER_SCENARIOS = frozenset(name for name, _ in CPU_ROWS + TTFT_ROWS)
STARTED = time.monotonic()
LOAD_AT_START = os.getloadavg()[0]


def scenarios(quick: bool) -> list[Scenario]:
    """Bursts (closed loop) measure CPU per event at saturation; paced ones are the
    realistic load: every socket warm, 300 B deltas 10 ms apart, streams staggered evenly
    in phase, so the relays are not saturated and the figures are what they add."""
    n = 1 if quick else 4  # turns multiplier
    burst = "burst [[sim deltas=100 delta_bytes=300]]"
    paced = "paced [[sim deltas=50 delta_bytes=300 delay_ms=10]]"
    tool = 'tool [[sim call exec_command {"cmd":"echo ok"}]]'
    one = "turn [[sim deltas=1 delta_bytes=100]]"
    out = [
        Scenario("burst-c1", 1, 10 * n, burst),
        Scenario("burst-c50", 50, 2 * n, burst),
        Scenario("20KB-c50", 50, 2 * n, "big [[sim deltas=10 delta_bytes=20000]]"),
        Scenario("toolloop-c50", 50, 5 * n, tool, output_bytes=10_000),
        # one 100 B delta per turn: TTFT and the whole turn at 1 socket
        Scenario("turn-c1", 1, 100 * n, one, True),
        Scenario("paced-c50", 50, 2 * n, paced, True, stagger_s=0.01),
        # TTFT at 50 sockets without queueing: each socket starts a turn every second,
        # evenly in phase (one turn every 20 ms in all), so a relay handles one turn at a
        # time; 200 turns measured (300 in full runs)
        Scenario("ttft-c50", 50, 4 + n // 2, one, True, stagger_s=1.0, period_s=1.0),
        Scenario("paced-c200", 200, 2 * n, paced, True, stagger_s=0.01),
    ]
    if not quick:
        out.append(
            Scenario(
                "paced-c1000", 1000, 1, "paced [[sim deltas=6 delay_ms=500]]", True, stagger_s=0.5
            )
        )
    return out


def pct(values: list[int], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e6  # ms


def summarize(raw: dict[str, Any], cpu: float | None, sim_cpu: float) -> dict[str, Any]:
    lat, ttft, elapsed = raw["lat"], raw["ttft"], raw["elapsed"]
    return {
        "events": raw["events"],
        "turns": raw["turns"],
        "errors": raw["errors"] + raw["crashed_clients"] + raw["connect_failures"],
        "failures": raw["failures"],
        "lat_ms": {q: pct(lat, v) for q, v in QUANTILES.items()},
        "ttft_ms": {q: pct(ttft, v) for q, v in QUANTILES.items()},
        "turn_ms": {q: pct(raw["turn"], v) for q, v in QUANTILES.items()},
        "turns_per_s": raw["turns"] / elapsed if elapsed else 0.0,
        "events_per_s": raw["events"] / elapsed if elapsed else 0.0,
        "cpu_us_per_event": cpu / raw["events"] * 1e6
        if cpu is not None and raw["events"]
        else None,
        # near 100: the relay was the bottleneck
        "relay_cpu_util_pct": 100 * cpu / elapsed if cpu is not None and elapsed else None,
        # simulator + load generator share the other core: near 100 = the load side limits
        # the run (then "saturation" figures are the load side's, not the relay's)
        "load_cpu_util_pct": 100 * (sim_cpu + raw["load_cpu_s"]) / elapsed if elapsed else None,
    }


def measure(
    url: str,
    headers: dict[str, str],
    pid: int | None,
    sim_pid: int,
    sc: Scenario,
    timeout_s: float = 900,
) -> dict[str, Any]:
    # CPU is read by the load generator over the measured part: a warm run's connection
    # set-up and warm turns are neither counted as events nor billed as CPU.
    pids = (sim_pid,) if pid is None else (pid, sim_pid)
    raw = run_load(url, headers, sc, timeout_s, cpu_pids=pids)
    cpu = raw["cpu_s"][str(pid)] if pid else None
    return summarize(raw, cpu, raw["cpu_s"][str(sim_pid)])


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def add_relative(row: dict[str, Any]) -> None:
    """added = through-path percentile minus the direct one; ratios to floor and direct."""
    direct, floor = row["direct"], row.get("floor")
    for data in row.values():
        data["added_ms"] = {q: _minus(data["lat_ms"][q], direct["lat_ms"][q]) for q in QUANTILES}
        data["ttft_added_ms"] = {
            q: _minus(data["ttft_ms"][q], direct["ttft_ms"][q]) for q in QUANTILES
        }
        data["turn_added_ms"] = {
            q: _minus(data["turn_ms"][q], direct["turn_ms"][q]) for q in QUANTILES
        }
        data["x_direct"] = {
            "lat_p99": _ratio(data["lat_ms"]["p99"], direct["lat_ms"]["p99"]),
            "turns_per_s": _ratio(data["turns_per_s"], direct["turns_per_s"]),
        }
        if floor is not None:
            data["x_floor"] = {
                "cpu_us_per_event": _ratio(data["cpu_us_per_event"], floor["cpu_us_per_event"]),
                "lat_p99": _ratio(data["lat_ms"]["p99"], floor["lat_ms"]["p99"]),
                "turns_per_s": _ratio(data["turns_per_s"], floor["turns_per_s"]),
            }


def _start_relay(module: str, stack: ExitStack, upstream: str) -> tuple[str, int]:
    port = free_port()
    proc = ManagedProcess(python_module(module, "--port", str(port), "--upstream", upstream)).start(
        wait_port=port
    )
    stack.callback(proc.stop)
    assert proc.proc is not None
    return f"ws://127.0.0.1:{port}/v1/responses", proc.proc.pid


Config = tuple[str, str, dict[str, str], int | None]  # label, url, headers, relay pid


def scenario_row(
    sc: Scenario, configs: list[Config], sim: SimProcess, peer: dict[str, Any], rounds: int = 1
) -> dict[str, Any]:
    """One scenario through every relay, in ``rounds`` rounds combined by median
    (bench/rounds.py); LiteLLM, far from the others, runs in the first round only. Its
    failure is noted in ``peer``, never the end of the run."""
    assert sim.proc.proc is not None
    measured: list[dict[str, Any]] = []
    for index in range(rounds):
        row: dict[str, Any] = {}
        for label, url, headers, pid in round_order(configs, index):
            sim.control.reset()
            if label != PEER:
                row[label] = measure(url, headers, pid, sim.proc.proc.pid, sc)
            elif sc.name in PEER_SCENARIOS and index == 0:
                try:
                    row[label] = measure(url, headers, pid, sim.proc.proc.pid, sc, timeout_s=300)
                except RuntimeError as exc:
                    peer.setdefault("scenario_errors", {})[sc.name] = str(exc)
        add_relative(row)
        measured.append(row)
    return combine_rounds(measured)


def warm_up(url: str, headers: dict[str, str]) -> None:
    """One unmeasured turn per relay before any scenario, so none of them bills its
    first-request work (LiteLLM sets up lazily) to the first scenario."""
    from websockets.sync.client import connect

    text = {"type": "input_text", "text": "warm [[sim deltas=1]]"}
    create = {
        "type": "response.create",
        "model": "bench",
        "store": False,
        "input": [{"type": "message", "role": "user", "content": [text]}],
    }
    with connect(url, additional_headers=headers, open_timeout=30) as ws:
        ws.send(json.dumps(create))
        while True:  # to the terminal event, whatever it is
            head = str(ws.recv(timeout=60))[:44]
            if '"response.completed"' in head or '"error"' in head:
                break


def peer_ready(litellm: litellm_target.Peer, peer: dict[str, Any]) -> Config | None:
    """LiteLLM's row of relays once it listens; None (and why, in ``peer``) if it never does."""
    try:
        pid = litellm.ready()
    except (RuntimeError, TimeoutError) as exc:
        peer["status"] = f"failed to start: {exc}"
        peer["log_tail"] = litellm.proc.output()[-2000:]
        return None
    peer["status"] = "measured"
    return (PEER, litellm.url, litellm.headers, pid)


def run(quick: bool, only: set[str]) -> dict[str, Any]:
    peer = litellm_target.prepare(install=os.environ.get("BENCH_LITELLM") == "1")
    results: dict[str, Any] = {"scenarios": {}, "quick": quick, "litellm": peer}
    with ExitStack() as stack:
        sim = stack.enter_context(run_sim("--timestamps"))
        assert sim.proc.proc is not None
        pin(sim.proc.proc.pid, LOAD_CPU)
        # LiteLLM's start takes tens of seconds: begun first, waited for last
        litellm = litellm_target.start(sim.base_url) if peer["status"] == "installed" else None
        if litellm is not None:
            stack.callback(litellm.proc.stop)
        direct_url = f"ws://127.0.0.1:{sim.port}/v1/responses"
        floor_url, floor_pid = _start_relay("bench.floor_relay", stack, direct_url)
        configs: list[Config] = [
            ("direct", direct_url, {"Authorization": "Bearer sk-sim-a"}, None),
            ("floor", floor_url, {}, floor_pid),
        ]
        if not quick:
            own_url, own_pid = _start_relay("bench.own_client_relay", stack, direct_url)
            configs.append(("own-client relay", own_url, {}, own_pid))
        for mode in ("passthrough", "ctx_pool"):
            gw = stack.enter_context(run_gateway(bench_gateway_config(sim, mode)))
            assert gw.proc.proc is not None
            configs.append((mode, gw.ws_url, auth_headers(), gw.proc.proc.pid))
        if litellm is not None and (ready := peer_ready(litellm, peer)) is not None:
            configs.append(ready)
        for _, url, headers, pid in configs:
            if pid:
                pin(pid, RELAY_CPU)
            warm_up(url, headers)
        for sc in scenarios(quick):
            if only and sc.name not in only:
                continue
            results["scenarios"][sc.name] = scenario_row(
                sc, configs, sim, peer, rounds=1 if quick else ROUNDS
            )
            progress(sc.name)
        if only:
            return results
        sim.control.reset()
        results["stages"] = stage_breakdown(sim, quick)
        progress("stages")
        results["faults"] = {}
        for mode in ("passthrough", "ctx_pool"):
            results["faults"][mode] = fault_run(sim, mode, quick)
            progress(f"faults {mode}")
        results["alloc"] = {}
        for label, app, mode in (
            ("floor", "floor", ""),
            ("passthrough", "gateway", "passthrough"),
            ("ctx_pool", "gateway", "ctx_pool"),
        ):
            sim.control.reset()
            results["alloc"][label] = alloc_and_profile(sim, app, mode, quick)
            progress(f"alloc+profile {label}")
    results["frame_layer"] = frame_layer_run(20_000 if quick else 50_000)
    progress("frame layer")
    results["pool_acquire"] = pool_acquire()
    progress("pool acquire")
    return results


def stages_only(quick: bool) -> dict[str, Any]:
    with run_sim("--timestamps") as sim:
        assert sim.proc.proc is not None
        pin(sim.proc.proc.pid, LOAD_CPU)
        return stage_breakdown(sim, quick)


def pool_acquire() -> list[dict[str, Any]]:
    """bench/pool_bench.py's figures when it is there (it belongs to the pool's owner)."""
    try:
        from bench.pool_bench import run as pool_run

        return list(pool_run())
    except Exception as exc:  # another team's module: report, do not lose the run
        return [{"error": repr(exc)[:300]}]


def progress(what: str) -> None:
    print(f"[{time.monotonic() - STARTED:6.1f}s] done {what}", file=sys.stderr, flush=True)


def machine() -> dict[str, Any]:
    packages = {}
    for name in (
        "uvicorn",
        "starlette",
        "websockets",
        "wsproto",
        "picows",
        "httptools",
        "uvloop",
        "msgspec",
        "prometheus-client",
        "redis",
        "httpx",
    ):
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = "-"
    return {
        "cores": os.cpu_count(),
        # other work on the machine: the figures are only as steady as this is low
        "load_avg_at_start": LOAD_AT_START,
        "cpu_model": _cpu_model(),
        "relay_cpu": RELAY_CPU,
        "load_cpu": LOAD_CPU,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": packages,
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "-"


def commit() -> str:
    """Short HEAD, with -dirty when the measured packages differ from it."""
    try:
        head = subprocess.check_output(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, text=True
        ).strip()
        dirty = subprocess.run(
            ["git", "diff", "--quiet", "HEAD", "--", "gateway", "pool", "normalizer", "statestore"],
            cwd=REPO_ROOT,
            check=False,
        ).returncode
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_readme(block: str) -> None:
    """Replace the text between the README's bench markers with the generated block."""
    text = README.read_text()
    begin, end = "<!-- bench:begin -->", "<!-- bench:end -->"
    if begin not in text or end not in text:
        print("README has no bench markers; numbers block not written", file=sys.stderr)
        return
    head, rest = text.split(begin, 1)
    tail = rest.split(end, 1)[1]
    README.write_text(f"{head}{begin}\n{block}\n{end}{tail}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="smaller counts (the default)")
    group.add_argument("--full", action="store_true")
    parser.add_argument("--only", action="append", help="just this scenario; prints JSON")
    parser.add_argument("--stages", action="store_true", help="just the stage breakdown")
    args = parser.parse_args()
    # SIGTERM (e.g. from `timeout`) unwinds the ExitStack so no child process is left behind.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    quick = not args.full
    if args.stages:
        print(json.dumps(stages_only(quick), indent=2))
        return
    data = run(quick=quick, only=set(args.only or ()))
    if args.only:
        print(json.dumps(data["scenarios"], indent=2))
        return
    data["machine"] = machine()
    data["date"] = datetime.date.today().isoformat()
    data["commit"] = commit()
    data["elapsed_s"] = round(time.monotonic() - STARTED, 1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    # Quick runs are for iterating: one untracked file, overwritten each time.
    out = RESULTS / ("quick.json" if quick else f"{data['date']}-{data['commit']}.json")
    out.write_text(json.dumps(data, indent=2))
    text = markdown(data)
    DOC.write_text(text)
    write_readme(readme_block(data))
    print(text)
    print(f"\nwrote {out}, {DOC} and the README block in {data['elapsed_s']} s", file=sys.stderr)


if __name__ == "__main__":
    main()
