"""docs/benchmarks.md and the README's numbers block from a result dict: CPU per event
against the independent floor, TTFT added over direct, the per-stage breakdown of a
ctx_pool turn, the frame layer alone, then the detail per scenario, allocations, the
profiles, faults and pool acquire."""

from __future__ import annotations

from typing import Any

from bench.formatting import dig, fmt
from bench.litellm_target import LABEL as PEER
from bench.report_detail import (
    alloc_and_profile,
    faults_table,
    peer_method,
    peer_notes,
    pool_table,
    scenario_tables,
)

RELAYS = ("floor", "own-client relay", "passthrough", "ctx_pool", PEER)
GATEWAY_MODES = ("passthrough", "ctx_pool")
CPU_ROWS = (
    ("burst-c1", "1 socket, 100 x 300 B bursts"),
    ("burst-c50", "50 sockets, 300 B bursts"),
    ("20KB-c50", "50 sockets, 20 KB events"),
    ("toolloop-c50", "50 sockets, tool loops (10 KB continuation)"),
    ("paced-c50", "50 sockets paced (300 B, 10 ms apart)"),
    ("paced-c200", "200 sockets paced (300 B, 10 ms apart)"),
    ("turn-c1", "1 socket, one 100 B delta per turn"),
)
TTFT_ROWS = (
    ("turn-c1", "1 socket"),
    ("ttft-c50", "50 sockets"),
    ("paced-c200", "200 sockets"),
)
STAGE_LABELS = {
    "decode": "frame → request decoded",
    "lookup": "state lookup",
    "pick": "account and transport chosen",
    "acquire": "pool acquire",
    "stop_watch": "idle watcher stopped",
    "normalize": "normalize",
    "encode": "encode (- = the client's bytes went out unchanged)",
    "note": "normalizer decision noted (metrics, payload sample)",
    "upstream_write": "upstream write",
    "pre_write": "turn entry → upstream write (this per-stage run)",
    "pre_issue": "turn entry → upstream write called (this per-stage run)",
    "relay": "relay: first byte → terminal (includes the upstream's own time)",
    "bind": "bind (state store) after the terminal",
    "watch_idle": "idle watcher restarted",
    "release": "lease release",
    "turn": "whole turn",
    "spans": "all span work in the turn (creation, enter, exit)",
    "spans_calls": "spans entered per turn (count)",
    "metrics": "Prometheus label lookups in the turn (lock-free updates are not timed)",
    "metrics_calls": "Prometheus label lookups per turn (count)",
}


def _verdict(value: float | None, limit: float, higher_is_better: bool = False) -> str:
    if value is None:
        return "n/a"
    ok = value >= limit if higher_is_better else value <= limit
    return "ok" if ok else "**MISSED**"


def _relays(data: dict[str, Any]) -> list[str]:
    """The relays measured, and LiteLLM's column always (it says why it has no figures)."""
    seen = {label for row in data["scenarios"].values() for label in row} | {PEER}
    return [r for r in RELAYS if r in seen]


def _missing(data: dict[str, Any], relay: str) -> str:
    """What a cell without a figure says: for LiteLLM, why it was not measured."""
    if relay != PEER:
        return "-"
    status = dig(data, "litellm", "status")
    if status is None:
        return "not run"
    if status == "measured":
        return "failed"  # started, but this scenario did not finish (see the notes)
    return "failed to start" if status.startswith("failed") else status


def _cell(data: dict[str, Any], name: str, relay: str, *keys: str, digits: int = 2) -> str:
    if relay not in data["scenarios"][name]:
        return _missing(data, relay)
    return fmt(dig(data["scenarios"][name], relay, *keys), digits)


def cpu_table(data: dict[str, Any]) -> list[str]:
    """CPU µs per relayed event, each relay as a multiple of the floor (target ≤ 1.2x)."""
    sc = data["scenarios"]
    others = [r for r in _relays(data) if r != "floor"]
    lines = [
        "| traffic | floor µs/event | " + " | ".join(f"{r} (x floor)" for r in others) + " |",
        "|---|---:|" + "---:|" * len(others),
    ]
    for name, what in CPU_ROWS:
        if name not in sc:
            continue
        cells = []
        for r in others:
            ratio = dig(sc, name, r, "x_floor", "cpu_us_per_event")
            mark = "" if ratio is None or r not in GATEWAY_MODES or ratio <= 1.2 else " ✗"
            cells.append(_cell(data, name, r, "x_floor", "cpu_us_per_event") + mark)
        floor = fmt(dig(sc, name, "floor", "cpu_us_per_event"), 1)
        lines.append(f"| {what} (`{name}`) | {floor} | " + " | ".join(cells) + " |")
    return lines


def ttft_table(data: dict[str, Any]) -> list[str]:
    """TTFT added over direct (ms, p50) per response.create; the whole turn at 1 socket."""
    sc = data["scenarios"]
    relays = _relays(data)
    lines = [
        "| added over direct, p50 (ms) | " + " | ".join(relays) + " |",
        "|---|" + "---:|" * len(relays),
    ]
    for name, what in TTFT_ROWS:
        if name in sc:
            lines.append(
                f"| TTFT, {what} (`{name}`) | "
                + " | ".join(_cell(data, name, r, "ttft_added_ms", "p50", digits=3) for r in relays)
                + " |"
            )
    if "turn-c1" in sc:
        lines.append(
            "| whole turn, 1 socket (`turn-c1`) | "
            + " | ".join(
                _cell(data, "turn-c1", r, "turn_added_ms", "p50", digits=3) for r in relays
            )
            + " |"
        )
    return lines


def turn_entry_to_write(data: dict[str, Any], key: str = "pre_write") -> float | None:
    """The headline per-turn figure: the bare run's (no timer in between), else the
    per-stage run's (older results). ``pre_issue``: until the write is called."""
    bare = dig(data, "stages", "bare", "continuation", "p50_us", key)
    return bare if bare is not None else dig(data, "stages", "continuation", "p50_us", key)


# The bare run's two clocks, and the floor's (the same turns through bench/floor_relay.py).
BARE_ROWS = (
    ("pre_write", "turn entry → upstream write done, wall time"),
    ("pre_write_cpu", "turn entry → upstream write done, this thread's CPU"),
    ("pre_issue", "turn entry → upstream write called"),
    ("frame_to_issue", "frame in (ASGI receive) → upstream write called"),
    ("frame_to_write", "frame in (ASGI receive) → upstream write done"),
    ("frame_to_first_out", "frame in → first event written to the client (gateway only)"),
)


def stage_table(data: dict[str, Any]) -> list[str]:
    stages = data.get("stages")
    if not stages:
        return []
    cont, every = stages["continuation"], stages["all"]
    lines = [
        "| stage | continuation turns, p50 µs | all turns, p50 µs |",
        "|---|---:|---:|",
    ]
    for key, label in STAGE_LABELS.items():
        lines.append(
            f"| {label} | {fmt(dig(cont, 'p50_us', key), 1)} |"
            f" {fmt(dig(every, 'p50_us', key), 1)} |"
        )
    lines.append(f"| turns measured | {cont['turns']} | {every['turns']} |")
    bare = stages.get("bare")
    if bare:
        floor = stages.get("floor", {})
        lines += [
            "",
            "Timed at its ends only (no timer in between; the first row is the figure the"
            " target is held to). The floor column: the same turns through the floor relay,"
            " from the frame's arrival to its upstream write:",
            "",
            "| bare run, continuation turns, p50 µs | gateway ctx_pool | floor |",
            "|---|---:|---:|",
        ]
        for key, label in BARE_ROWS:
            lines.append(
                f"| {label} | {fmt(dig(bare, 'continuation', 'p50_us', key), 1)} |"
                f" {fmt(dig(floor, 'continuation', 'p50_us', key), 1)} |"
            )
    return lines


def frame_table(data: dict[str, Any]) -> list[str]:
    frames = data.get("frame_layer")
    if not frames:
        return []
    lines = ["| client | CPU µs per frame |", "|---|---:|"]
    for name, value in frames["client_cpu_us_per_frame"].items():
        lines.append(f"| {name} | {fmt(value) if isinstance(value, float) else value} |")
    for name, value in frames["parser_cpu_us_per_frame"].items():
        lines.append(f"| parser alone: {name} | {fmt(value)} |")
    return lines


def targets(data: dict[str, Any]) -> list[str]:
    sc = data["scenarios"]
    out = [
        "| target | passthrough | ctx_pool |",
        "|---|---|---|",
    ]
    worst = {
        m: max(
            (
                v
                for name, _ in CPU_ROWS
                if (v := dig(sc, name, m, "x_floor", "cpu_us_per_event")) is not None
            ),
            default=None,
        )
        for m in GATEWAY_MODES
    }
    out.append(
        "| CPU per event ≤ 1.2x the floor in every row (worst row) | "
        + " | ".join(f"{fmt(worst[m])} {_verdict(worst[m], 1.2)}" for m in GATEWAY_MODES)
        + " |"
    )
    out.append(_ahead_of_peer(data))
    for name, what in TTFT_ROWS[:2]:
        floor = dig(sc, name, "floor", "ttft_added_ms", "p50")
        cells = []
        for m in GATEWAY_MODES:
            value = dig(sc, name, m, "ttft_added_ms", "p50")
            limit = None if floor is None else floor + 0.1
            cells.append(
                f"{fmt(value, 3)} ms {_verdict(value, limit) if limit is not None else 'n/a'}"
            )
        out.append(f"| TTFT added ≤ floor's + 0.1 ms, {what} | " + " | ".join(cells) + " |")
        pt, cp = (dig(sc, name, m, "ttft_added_ms", "p50") for m in GATEWAY_MODES)
        out.append(
            f"| ctx_pool TTFT at or below passthrough, {what} | | "
            + ("n/a" if pt is None or cp is None else ("ok" if cp <= pt else "**MISSED**"))
            + " |"
        )
    pre = turn_entry_to_write(data)
    issued = turn_entry_to_write(data, "pre_issue")
    out.append(
        "| turn entry → upstream write p50 ≤ 50 µs (10 KB continuation, one pending call) | | "
        f"{fmt(pre, 1)} µs {_verdict(pre, 50.0)} (write called at {fmt(issued, 1)} µs) |"
    )
    faults = data.get("faults", {})
    for key, label, limit, good_high in (
        ("retry_attempts_per_turn", "faults: retry attempts per turn ≤ 1.2", 1.2, False),
        ("retry_exhausted_pct", "faults: retry_exhausted ≤ 0.5 %", 0.5, False),
        ("pool_reuse_pct", "faults: pool reuse ≥ 75 %", 75.0, True),
    ):
        out.append(
            f"| {label} | "
            + " | ".join(
                f"{fmt(dig(faults, m, key), 3)} {_verdict(dig(faults, m, key), limit, good_high)}"
                for m in GATEWAY_MODES
            )
            + " |"
        )
    return out


def _ahead_of_peer(data: dict[str, Any]) -> str:
    """Less CPU per event than LiteLLM in every CPU row: the worst row's ratio (< 1 = ahead)."""
    sc, label = (
        data["scenarios"],
        "| CPU per event below LiteLLM's in every row (worst row, x LiteLLM) | ",
    )
    rows = [name for name, _ in CPU_ROWS if name in sc]
    cells = []
    for m in GATEWAY_MODES:
        ratios = [
            ours / peer
            for name in rows
            if (peer := dig(sc, name, PEER, "cpu_us_per_event"))
            and (ours := dig(sc, name, m, "cpu_us_per_event")) is not None
        ]
        if not ratios:
            cells.append(f"n/a ({_missing(data, PEER)})")
            continue
        missing = len(rows) - len(ratios)
        worst = max(ratios)
        note = f" ({missing} rows without LiteLLM)" if missing else ""
        verdict = (
            "ok" if worst < 1.0 and not missing else "**MISSED**" if worst >= 1.0 else "partial"
        )
        cells.append(f"{fmt(worst)} {verdict}{note}")
    return label + " | ".join(cells) + " |"


def _rounds_method(data: dict[str, Any]) -> str:
    rounds = max(
        (r.get("rounds", 1) for row in data["scenarios"].values() for r in row.values()),
        default=1,
    )
    if rounds <= 1:
        return ""
    return (
        f" Each scenario ran in {rounds} rounds, every relay back to back within a round"
        " (order reversed every other round); each figure is the median over the rounds of"
        " that round's figure, ratios taken against the same round's floor (bench/rounds.py)."
        " LiteLLM ran in the first round only."
    )


def readme_block(data: dict[str, Any]) -> str:
    """The README's numbers: generated by ``make bench``/``make bench-quick``, never edited."""
    how = "make bench-quick" if data["quick"] else "make bench"
    lines = [
        f"Generated by `{how}` on {data['date']} at `{data['commit']}`, load average"
        f" {fmt(data['machine'].get('load_avg_at_start'), 1)} on {data['machine']['cores']}"
        " cores at the start (full tables: [docs/benchmarks.md](docs/benchmarks.md)).",
        "",
        "Relay CPU per event against the independent floor (`bench/floor_relay.py`:"
        " Starlette/uvicorn/uvloop + the `websockets` client, no gateway code); LiteLLM's"
        f" proxy ({peer_method(data, short=True)}) is the peer:",
        "",
        *cpu_table(data),
        "",
        *ttft_table(data),
        "",
    ]
    pre = turn_entry_to_write(data)
    if pre is not None:
        issued = turn_entry_to_write(data, "pre_issue")
        gateway_frame = dig(data, "stages", "bare", "continuation", "p50_us", "frame_to_write")
        floor_frame = dig(data, "stages", "floor", "continuation", "p50_us", "frame_to_write")
        lines += [
            f"In-process cost of a 10 KB tool-loop continuation, turn entry → upstream write:"
            f" **{pre:.1f} µs** p50 (the write called at {fmt(issued, 1)} µs); from the"
            f" frame's arrival to the upstream write done: {fmt(gateway_frame, 1)} µs, the"
            f" floor {fmt(floor_frame, 1)} µs (`python -m bench --stages`).",
            "",
        ]
    frames = dig(data, "frame_layer", "client_cpu_us_per_frame") or {}
    shown = [f"{k} {v:.2f}" for k, v in frames.items() if isinstance(v, float)]
    if shown:
        lines += [
            "Upstream frame layer alone, client CPU µs per ~400 B frame"
            " (`python -m bench.frame_layer`): " + "; ".join(shown) + ".",
        ]
    return "\n".join(lines)


def markdown(data: dict[str, Any]) -> str:
    m = data["machine"]
    how = "make bench-quick" if data["quick"] else "make bench"
    lines = [
        "# Benchmarks",
        "",
        f"Produced by `{how}` on {data['date']} at commit `{data['commit']}` in"
        f" {data.get('elapsed_s', '-')} s (JSON in `bench/results/`; compare two runs with"
        " `.venv/bin/python -m bench.compare OLD.json NEW.json`). Machine: "
        f"{m['cores']} cores ({m.get('cpu_model', '-')}), 1-minute load average"
        f" {fmt(m.get('load_avg_at_start'), 1)} at the start, Python {m['python']}, {m['platform']}; "
        + ", ".join(f"{k} {v}" for k, v in m["packages"].items())
        + ".",
        "",
        "Method: the same scripted Responses-WebSocket traffic through every relay: direct to"
        " the simulator; through the **floor** (`bench/floor_relay.py`, sharing no code with"
        " the gateway: Starlette + uvicorn + uvloop ingress with the gateway's uvicorn"
        " settings, the `websockets` asyncio client upstream, frames copied both ways with no"
        " parsing); in full runs the *own-client relay* (the floor's ingress on the gateway's"
        " upstream client, pricing that client alone); the gateway in `passthrough`; in"
        f" `ctx_pool`. Relays are pinned to CPU {m.get('relay_cpu', 0)}; the simulator and the"
        f" load generator (its own process) to CPU {m.get('load_cpu', 1)}. Each relay serves"
        " one unmeasured turn before the first scenario, so none bills its first-request"
        " set-up to a scenario. CPU per event ="
        " relay process CPU time (/proc/<pid>/schedstat) over the run / events relayed."
        " Latency per event = client receive time minus the simulator's `sim_t_ns` stamp;"
        " *added* = through-path percentile minus the direct percentile on the same scripted"
        " events (slightly negative = noise). TTFT = first event minus the client's send of"
        " `response.create`. Paced scenarios: every socket warmed, then streams of 300 B"
        " deltas 10 ms apart, staggered evenly in phase. `ttft-c50`: 50 warm sockets, each"
        " starting a one-delta turn every second on a fixed schedule, evenly in phase (one"
        " turn every 20 ms in all), so a relay mostly handles one turn at a time and its"
        " TTFT is its own, not queueing behind the other sockets' turns." + _rounds_method(data),
        "",
        peer_method(data),
        "",
        "## CPU per relayed event against the floor (target ≤ 1.2x; ✗ = above)",
        "",
        *cpu_table(data),
        "",
        "## Time to first token and whole turn, added over direct",
        "",
        *ttft_table(data),
        "",
        "## Targets",
        "",
        *targets(data),
        "",
    ]
    if data.get("stages"):
        lines += [
            "## One ctx_pool turn inside the gateway, per stage (bench/stages.py)",
            "",
            "1 socket, tool loops whose continuation carries a 10 KB `function_call_output`"
            " for the one pending call; wall-clock p50 per stage in the in-process host"
            " (a stage absent from a turn is not counted). Each timed stage reads the clock"
            f" twice; one read cost {fmt(dig(data, 'stages', 'clock_read_ns'), 0)} ns here,"
            " included in the figures, and each timer adds a call layer, so the stages sum to"
            " more than the bare run below. The upstream write includes the socket's send"
            " system call (on loopback the kernel delivers to the receiver in that call).",
            "",
            *stage_table(data),
            "",
        ]
    if data.get("frame_layer"):
        lines += [
            "## Upstream frame layer alone (bench/frame_layer.py)",
            "",
            f"{data['frame_layer']['frames']:,} text frames of"
            f" {data['frame_layer']['frame_bytes']} B from a server process on the other core;"
            " client CPU time per frame, received through a `recv()` coroutine.",
            "",
            *frame_table(data),
            "",
        ]
    lines += peer_notes(data)
    lines += scenario_tables(data)
    lines += alloc_and_profile(data)
    lines += faults_table(data)
    lines += pool_table(data)
    return "\n".join(lines)
