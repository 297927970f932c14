"""What the harness reads besides client timings: a process's CPU time, the gateway's
Prometheus counters under injected faults, and the in-process host's tracemalloc and
cProfile figures (bench/inproc.py)."""

from __future__ import annotations

import json
import os
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from bench.load import Scenario, pin, run_load
from tests.e2e.harness import SimProcess, auth_headers, gateway_config, run_gateway
from tests.support import ManagedProcess, free_port, python_module, toml_dumps

RELAY_CPU, LOAD_CPU = 0, 1


def bench_gateway_config(sim: SimProcess, mode: str, **openai_ws: object) -> dict[str, object]:
    """The gateway as the bench runs it: pool sized for 1k sockets, default logging."""
    return gateway_config(
        sim.base_url,
        max_conns=4096,
        overrides={
            "openai_ws": {"mode": mode, "queue_limit": 4096, **openai_ws},
            "telemetry": {"log_level": "info"},  # the default: one JSON line per turn
        },
    )


# -- Prometheus counters ---------------------------------------------------------------


def metric_sum(text: str, name: str, **labels: str) -> float:
    """Sum of every sample of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, label_text = head.partition("{")
        if metric != name:
            continue
        if all(f'{k}="{v}"' in label_text for k, v in labels.items()):
            total += float(value)
    return total


def fault_figures(metrics: str, raw: dict[str, Any], mode: str) -> dict[str, Any]:
    turns = metric_sum(metrics, "gateway_turns_total", mode=mode)
    retries = metric_sum(metrics, "gateway_retry_attempts_total")
    reused = metric_sum(metrics, "gateway_pool_acquires_total", kind="reused")
    dialed = metric_sum(metrics, "gateway_pool_acquires_total", kind="dialed")
    completed = metric_sum(metrics, "gateway_turns_total", mode=mode, outcome="completed")

    def pct_of_turns(value: float) -> float | None:
        return 100 * value / turns if turns else None

    return {
        "turns": turns,
        "turns_completed": completed,
        "client_turns_ok": raw["turns"],
        "client_errors": raw["errors"],
        "client_connect_failures": raw.get("connect_failures", 0),
        "failures": raw.get("failures", []),
        # attempts including the first, so 1.0 means no retry at all
        "retry_attempts_per_turn": 1 + retries / turns if turns else None,
        # turns that failed or never started because the client's socket was refused
        "client_visible_failure_pct": 100
        * (turns - completed + raw.get("connect_failures", 0))
        / (turns + raw.get("connect_failures", 0))
        if turns
        else None,
        "retry_exhausted_pct": pct_of_turns(metric_sum(metrics, "gateway_retry_exhausted_total")),
        "fallback_rate_pct": pct_of_turns(metric_sum(metrics, "gateway_http_fallbacks_total")),
        "pool_reuse_pct": 100 * reused / (reused + dialed) if reused + dialed else None,
        "pool_acquires": {"reused": reused, "dialed": dialed},
    }


def fault_run(sim: SimProcess, mode: str, quick: bool) -> dict[str, Any]:
    """~5% of dials refused (503) and ~2% of streams closed 1011 before their first event.
    Clients reconnect every 5 turns, so passthrough's pool has sockets to hand back too."""
    cfg = bench_gateway_config(sim, mode, retry_backoff_initial_ms=20, retry_backoff_max_ms=200)
    with run_gateway(cfg) as gw:
        assert gw.proc.proc is not None
        pin(gw.proc.proc.pid, RELAY_CPU)
        sim.control.reset()
        sim.control.add_fault(kind="handshake_status", status=503, probability=0.05, times=10**9)
        sim.control.add_fault(
            kind="close_after_events", after_events=0, code=1011, probability=0.02, times=10**9
        )
        turns = 20 if quick else 100
        sc = Scenario("faults", 20, turns, "fault run [[sim deltas=5]]", turns_per_socket=5)
        raw = run_load(gw.ws_url, auth_headers(), sc)
        metrics = httpx.get(gw.http_url + "/metrics").text
        fired = {rule["kind"]: rule["fired"] for rule in sim.control.faults()}
        dials = len(sim.control.log(raw=False).connections)
        sim.control.clear_faults()
    figures = fault_figures(metrics, raw, mode)
    if figures["pool_reuse_pct"] is None and raw.get("sockets_opened"):
        # The mode exports no acquire counter: reuse = client sockets served without a
        # dial of their own, from the simulator's count of upstream handshakes.
        figures["pool_reuse_pct"] = max(0.0, 100 * (1 - dials / raw["sockets_opened"]))
        figures["pool_reuse_source"] = "simulator handshakes vs client sockets"
    return {**figures, "faults_fired": fired, "upstream_dials": dials}


# -- the in-process host: tracemalloc and cProfile -------------------------------------


class Control:
    """Line client for bench/inproc.py's control socket."""

    def __init__(self, port: int) -> None:
        self._sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self._file = self._sock.makefile("rwb")

    def __call__(self, command: str) -> dict[str, Any]:
        self._file.write(command.encode() + b"\n")
        self._file.flush()
        reply: dict[str, Any] = json.loads(self._file.readline())
        if not reply.get("ok"):
            raise RuntimeError(f"inproc control {command!r}: {reply}")
        return reply

    def close(self) -> None:
        self._file.close()
        self._sock.close()


@contextmanager
def run_inproc(app: str, sim: SimProcess, mode: str = "") -> Iterator[tuple[str, Control]]:
    """An in-process relay host (gateway in ``mode``, or the floor) pinned to the relay CPU."""
    port, control_port = free_port(), free_port()
    args = ["--app", app, "--port", str(port), "--control-port", str(control_port)]
    path = ""
    if app == "gateway":
        fd, path = tempfile.mkstemp(prefix="bench-gw-", suffix=".toml")
        with os.fdopen(fd, "w") as fh:
            fh.write(toml_dumps(bench_gateway_config(sim, mode)))
        args += ["--config", path]
    else:
        args += ["--upstream", f"ws://127.0.0.1:{sim.port}/v1/responses"]
    proc = ManagedProcess(python_module("bench.inproc", *args)).start(wait_port=port)
    try:
        assert proc.proc is not None
        pin(proc.proc.pid, RELAY_CPU)
        control = Control(control_port)
        try:
            yield f"ws://127.0.0.1:{port}/v1/responses", control
        finally:
            control.close()
    finally:
        proc.stop()
        if path:
            os.unlink(path)


def alloc_and_profile(sim: SimProcess, app: str, mode: str, quick: bool) -> dict[str, Any]:
    """tracemalloc around a batch of short text turns, then cProfile around another batch."""
    headers = auth_headers() if app == "gateway" else {}
    per_socket = 20 if quick else 100
    prompt = "alloc [[sim deltas=20]]"
    with run_inproc(app, sim, mode) as (url, control):
        run_load(url, headers, Scenario("warm", 10, 5, prompt))  # sockets dialed, caches filled
        control("alloc_start")
        raw = run_load(url, headers, Scenario("alloc", 10, per_socket, prompt))
        alloc = control("alloc_stop")
        control("profile_start")
        prof_raw = run_load(url, headers, Scenario("profile", 10, per_socket, prompt))
        profile = control("profile_stop 12")
    turns = raw["turns"] or 1
    return {
        "turns": raw["turns"],
        "events": raw["events"],
        "net_blocks_per_turn": alloc["net_blocks"] / turns,
        "net_bytes_per_turn": alloc["net_bytes"] / turns,
        # concurrency 10: the batch's peak working set spread over the 10 turns in flight
        "peak_bytes_per_turn_in_flight": alloc["peak_bytes_above_baseline"] / 10,
        "top_retained": alloc["top_retained"],
        "profile": {
            "turns": prof_raw["turns"],
            "events": prof_raw["events"],
            "total_s": profile["total_s"],
            "top": profile["top"],
        },
    }


def stage_breakdown(sim: SimProcess, quick: bool) -> dict[str, Any]:
    """One socket in ctx_pool, tool loops whose continuation carries a 10 KB output for the
    one pending call; p50 per stage inside the gateway (bench/stages.py)."""
    tool = 'tool [[sim call exec_command {"cmd":"echo ok"}]]'
    turns = 100 if quick else 400
    with run_inproc("gateway", sim, "ctx_pool") as (url, control):
        run_load(url, auth_headers(), Scenario("warm", 1, 10, tool, output_bytes=10_000))
        # First with timers at the two ends only (the headline figure), then every stage.
        control("stages_start bare")
        run_load(url, auth_headers(), Scenario("bare", 1, turns, tool, output_bytes=10_000))
        bare = control("stages_stop")
        control("stages_start")
        run_load(url, auth_headers(), Scenario("stages", 1, turns, tool, output_bytes=10_000))
        reply = control("stages_stop")
    # The same turns through the floor: its frame in → upstream write, for comparison.
    with run_inproc("floor", sim) as (url, control):
        run_load(url, {}, Scenario("warm", 1, 10, tool, output_bytes=10_000))
        control("stages_start frame")
        run_load(url, {}, Scenario("floor", 1, turns, tool, output_bytes=10_000))
        floor = control("stages_stop")
    return {
        "continuation": reply["continuation"],
        "all": reply["all"],
        "bare": {"continuation": bare["continuation"], "all": bare["all"]},
        "floor": {"continuation": floor["continuation"], "all": floor["all"]},
        "clock_read_ns": reply["clock_read_ns"],
    }
