"""``make bench`` / ``make bench-quick``: the same scripted traffic four ways, side by side.

    client -> simulator (direct)
    client -> floor relay (uvicorn + the gateway's upstream client, no parsing) -> simulator
    client -> gateway passthrough -> simulator
    client -> gateway ctx_pool -> simulator

The relay under test is pinned to CPU 0; the simulator and the load generator (its own
process) to CPU 1. Latency per event is measured on the same events: the simulator
stamps ``sim_t_ns`` just before sending, the client subtracts it on receipt; "added"
is a through-path percentile minus the direct one. CPU per event is the relay
process's CPU time over the run divided by the events it relayed. A fault run injects
5% failed dials and 2% failed streams and reads the gateway's own counters.
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
from contextlib import ExitStack
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.load import Scenario, pin, run_load
from tests.e2e.harness import auth_headers, gateway_config, run_gateway, run_sim
from tests.support import REPO_ROOT, ManagedProcess, free_port, python_module

RESULTS = REPO_ROOT / "bench" / "results"
DOC = REPO_ROOT / "docs" / "benchmarks.md"
TICK = os.sysconf("SC_CLK_TCK")


def scenarios(quick: bool) -> list[Scenario]:
    """Saturating scenarios measure CPU and throughput; paced ones measure latency."""
    if quick:
        return [
            Scenario("text-c1", 1, 100, "short [[sim deltas=20]]"),
            Scenario("toolloop-c10", 10, 10, 'tool [[sim call exec_command {"cmd":"echo ok"}]]'),
            Scenario("stream200-c100", 100, 2, "stream [[sim deltas=200]]"),
            Scenario("20KB-c10", 10, 10, "big [[sim deltas=10 delta_bytes=20000]]"),
            Scenario("paced-c200", 200, 1, "paced [[sim deltas=30 delay_ms=100]]", warm=True),
        ]
    return [
        Scenario("text-c1", 1, 400, "short [[sim deltas=20]]"),
        Scenario("toolloop-c10", 10, 40, 'tool [[sim call exec_command {"cmd":"echo ok"}]]'),
        Scenario("stream200-c100", 100, 5, "stream [[sim deltas=200]]"),
        Scenario("20KB-c10", 10, 40, "big [[sim deltas=10 delta_bytes=20000]]"),
        Scenario("paced-c1000", 1000, 1, "paced [[sim deltas=30 delay_ms=100]]", warm=True),
    ]


def cpu_seconds(pid: int) -> float:
    """On-CPU time of a process: nanosecond schedstat when available, else clock ticks."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK


def pct(values: list[int], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e6  # ms


def summarize(raw: dict[str, Any], cpu: float | None) -> dict[str, Any]:
    lat, ttft = raw["lat"], raw["ttft"]
    return {
        "events": raw["events"],
        "turns": raw["turns"],
        "errors": raw["errors"],
        "failures": raw["failures"],
        "lat_ms": {"p50": pct(lat, 0.5), "p95": pct(lat, 0.95), "p99": pct(lat, 0.99)},
        "ttft_ms": {"p50": pct(ttft, 0.5), "p99": pct(ttft, 0.99)},
        "turns_per_s": raw["turns"] / raw["elapsed"] if raw["elapsed"] else 0.0,
        "events_per_s": raw["events"] / raw["elapsed"] if raw["elapsed"] else 0.0,
        "cpu_us_per_event": (cpu / raw["events"] * 1e6)
        if cpu is not None and raw["events"]
        else None,
    }


def measure(url: str, headers: dict[str, str], pid: int | None, sc: Scenario) -> dict[str, Any]:
    before = cpu_seconds(pid) if pid else 0.0
    raw = run_load(url, headers, sc)
    cpu = cpu_seconds(pid) - before if pid else None
    return summarize(raw, cpu)


# -- the configurations ----------------------------------------------------------------


def _metric_sum(text: str, prefix: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(prefix) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def fault_run(sim: Any, quick: bool) -> dict[str, Any]:
    import httpx

    with run_gateway(
        gateway_config(
            sim.base_url,
            overrides={"openai_ws": {"retry_backoff_initial_ms": 20, "retry_backoff_max_ms": 200}},
        )
    ) as gw:
        pin(gw.proc.proc.pid, 0)  # type: ignore[union-attr]
        sim.control.reset()
        sim.control.add_fault(kind="handshake_status", status=503, probability=0.05, times=10**9)
        sim.control.add_fault(
            kind="close_after_events", after_events=0, code=1011, probability=0.02, times=10**9
        )
        sc = Scenario("faults", 20, 10 if quick else 50, "fault run [[sim deltas=5]]")
        raw = run_load(gw.ws_url, auth_headers(), sc)
        metrics = httpx.get(gw.http_url + "/metrics").text
        sim.control.clear_faults()
    turns = _metric_sum(metrics, "gateway_turns_total")
    reused = _metric_sum(metrics, 'gateway_pool_acquires_total{account="acct-a",kind="reused"}')
    dialed = _metric_sum(metrics, 'gateway_pool_acquires_total{account="acct-a",kind="dialed"}')
    return {
        "turns": turns,
        "client_errors": raw["errors"],
        "retry_attempts_per_turn": 1 + _metric_sum(metrics, "gateway_retry_attempts_total") / turns
        if turns
        else None,
        "retries_per_turn": _metric_sum(metrics, "gateway_retry_attempts_total") / turns
        if turns
        else None,
        "retry_exhausted_pct": 100 * _metric_sum(metrics, "gateway_retry_exhausted_total") / turns
        if turns
        else None,
        "fallback_rate_pct": 100 * _metric_sum(metrics, "gateway_http_fallbacks_total") / turns
        if turns
        else None,
        "pool_reuse_pct": 100 * reused / (reused + dialed) if reused + dialed else None,
    }


def run(quick: bool) -> dict[str, Any]:
    results: dict[str, Any] = {"scenarios": {}, "quick": quick}
    with ExitStack() as stack:
        sim = stack.enter_context(run_sim("--timestamps"))
        pin(sim.proc.proc.pid, 1)  # type: ignore[union-attr]
        direct_url = f"ws://127.0.0.1:{sim.port}/v1/responses"
        floor_port = free_port()
        floor = ManagedProcess(
            python_module("bench.floor_relay", "--port", str(floor_port), "--upstream", direct_url)
        ).start(wait_port=floor_port)
        stack.callback(floor.stop)
        gateways = {}
        for label, mode, ws_impl in (
            ("passthrough", "passthrough", "websockets-sansio"),
            ("ctx_pool", "ctx_pool", "websockets-sansio"),
            ("passthrough[wsproto ingress]", "passthrough", "wsproto"),
        ):
            cfg = gateway_config(
                sim.base_url,
                max_conns=4096,
                overrides={
                    "openai_ws": {"mode": mode, "queue_limit": 4096},
                    "server": {"ws_impl": ws_impl},
                    "telemetry": {"log_level": "warning"},
                },
            )
            gateways[label] = stack.enter_context(run_gateway(cfg))
        configs: list[tuple[str, str, dict[str, str], int | None]] = [
            ("direct", direct_url, {"Authorization": "Bearer sk-sim-a"}, None),
            ("floor", f"ws://127.0.0.1:{floor_port}/v1/responses", {}, floor.proc.pid),  # type: ignore[union-attr]
        ]
        # The bench sizes the pool for its own load (the default max_conns is 128 per account).
        configs += [
            (label, gw.ws_url, auth_headers(), gw.proc.proc.pid) for label, gw in gateways.items()
        ]
        for _, _, _, pid in configs:
            if pid:
                pin(pid, 0)
        for sc in scenarios(quick):
            if sc.concurrency >= 200:
                configs_now = [c for c in configs if "wsproto" not in c[0]]
            else:
                configs_now = configs
            row: dict[str, Any] = {}
            for label, url, headers, pid in configs_now:
                sim.control.reset()
                row[label] = measure(url, headers, pid, sc)
            direct = row["direct"]
            for data in row.values():
                data["added_ms"] = {
                    q: data["lat_ms"][q] - direct["lat_ms"][q] for q in ("p50", "p95", "p99")
                }
                if data["cpu_us_per_event"] and row["floor"]["cpu_us_per_event"]:
                    data["cpu_x_floor"] = (
                        data["cpu_us_per_event"] / row["floor"]["cpu_us_per_event"]
                    )
            results["scenarios"][sc.name] = row
            print(f"done {sc.name}", file=sys.stderr)
        results["faults"] = fault_run(sim, quick)
    from bench.pool_bench import run as pool_run

    results["pool_acquire"] = pool_run()
    return results


def machine() -> dict[str, Any]:
    packages = {}
    for name in (
        "uvicorn",
        "starlette",
        "websockets",
        "wsproto",
        "msgspec",
        "uvloop",
        "redis",
        "httpx",
    ):
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = "-"
    return {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": packages,
    }


def commit() -> str:
    try:
        return subprocess.check_output(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, text=True
        ).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown(data: dict[str, Any]) -> str:
    m = data["machine"]
    lines = [
        "# Benchmarks",
        "",
        f"Produced by `{'make bench-quick' if data['quick'] else 'make bench'}` on {data['date']} at commit `{data['commit']}`: "
        f"{m['cores']} cores, Python {m['python']}, "
        + ", ".join(f"{k} {v}" for k, v in m["packages"].items())
        + ".",
        "Relays pinned to CPU 0; simulator and load generator on CPU 1. Latency is per event, simulator send to client receive;"
        " *added* = through-path percentile minus the direct one. CPU per event = relay process CPU time / events.",
        "",
    ]
    for name, row in data["scenarios"].items():
        lines += [
            f"## {name}",
            "",
            "| path | events | CPU µs/event | x floor | lat p50 / p95 / p99 (ms) | added p50 / p95 / p99 (ms) | TTFT p50 / p99 (ms) | turns/s | errors |",
            "|---|---:|---:|---:|---|---|---|---:|---:|",
        ]
        for label, d in row.items():
            lat, add, ttft = d["lat_ms"], d["added_ms"], d["ttft_ms"]
            lines.append(
                f"| {label} | {d['events']} | {fmt(d['cpu_us_per_event'], 1)} | {fmt(d.get('cpu_x_floor'))} | "
                f"{fmt(lat['p50'], 3)} / {fmt(lat['p95'], 3)} / {fmt(lat['p99'], 3)} | {fmt(add['p50'], 3)} / {fmt(add['p95'], 3)} / {fmt(add['p99'], 3)} | "
                f"{fmt(ttft['p50'])} / {fmt(ttft['p99'])} | {fmt(d['turns_per_s'], 1)} | {d['errors']} |"
            )
        lines.append("")
    f = data["faults"]
    lines += [
        "## Fault injection (ctx_pool; 5% of dials refused with 503, 2% of streams closed 1011 before the first event)",
        "",
        "| figure | value | target |",
        "|---|---:|---|",
        f"| turns | {fmt(f['turns'], 0)} | |",
        f"| retry_attempts per turn (attempts incl. the first) | {fmt(f['retry_attempts_per_turn'], 3)} | ≤ 1.2 |",
        f"| retry_exhausted | {fmt(f['retry_exhausted_pct'], 2)} % | ≤ 0.5 % |",
        f"| fallback_rate | {fmt(f['fallback_rate_pct'], 2)} % | |",
        f"| pool reuse | {fmt(f['pool_reuse_pct'], 1)} % | ≥ 75 % |",
        f"| client-visible errors | {f['client_errors']} | |",
        "",
        "## Pool acquire + release (ns, p50)",
        "",
        "| idle conns | any | preferred |",
        "|---:|---:|---:|",
    ]
    for row in data["pool_acquire"]:
        lines.append(
            f"| {int(row['size']):,} | {row['acquire_release_ns_p50']:,.0f} | {row['preferred_ns_p50']:,.0f} |"
        )
    rows = data["pool_acquire"]
    lines += [
        "",
        f"10k/10 ratio: {rows[-1]['acquire_release_ns_p50'] / rows[0]['acquire_release_ns_p50']:.2f} (target ≤ 2)",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true")
    group.add_argument("--full", action="store_true")
    args = parser.parse_args()
    # SIGTERM (e.g. from `timeout`) unwinds the ExitStack so no child process is left behind.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    data = run(quick=not args.full)
    data["machine"] = machine()
    data["date"] = datetime.date.today().isoformat()
    data["commit"] = commit()
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{data['date']}-{data['commit']}{'-quick' if data['quick'] else ''}.json"
    out.write_text(json.dumps(data, indent=2))
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(markdown(data))
    print(markdown(data))
    print(f"\nwrote {out} and {DOC}", file=sys.stderr)


if __name__ == "__main__":
    main()
