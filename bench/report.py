"""docs/benchmarks.md from a result dict: a summary against the SPEC §5 targets, then the
detail per scenario, allocations, the ctx_pool profile, faults and pool acquire."""

from __future__ import annotations

from typing import Any

RELAYS = ("floor", "passthrough", "ctx_pool")
GATEWAY_MODES = ("passthrough", "ctx_pool")
SATURATING = ("text-c1", "text-c100", "stream200-c100", "20KB-c10", "toolloop-c100")


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _x(value: float | None) -> str:
    return "" if value is None else f" ({value:.2f}x)"


def _get(data: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def _verdict(value: float | None, limit: float, higher_is_better: bool = False) -> str:
    if value is None:
        return "n/a"
    ok = value >= limit if higher_is_better else value <= limit
    return "ok" if ok else "**MISSED**"


class _Summary:
    def __init__(self) -> None:
        self.lines = [
            "## Summary against the SPEC §5 targets",
            "",
            "(x floor) for the relays' own CPU and allocations, (x direct) for latency and"
            " throughput. *Worst CPU x floor* is the highest ratio over the saturating scenarios.",
            "",
            "| figure | floor | passthrough | ctx_pool | target | passthrough | ctx_pool |",
            "|---|---:|---:|---:|---|---|---|",
        ]

    def row(
        self, name: str, cells: dict[str, str], target: str = "", verdicts: tuple[str, ...] = ()
    ) -> None:
        self.lines.append(
            f"| {name} | "
            + " | ".join(cells.get(r, "-") for r in RELAYS)
            + f" | {target} | "
            + " | ".join(verdicts or ("", ""))
            + " |"
        )


def summary(data: dict[str, Any]) -> list[str]:
    sc = data["scenarios"]
    out = _Summary()
    for scenario, what in (
        ("stream200-c100", "small events"),
        ("text-c100", "short turns"),
        ("20KB-c10", "20 KB events"),
    ):
        out.row(
            f"CPU µs/event, {what} ({scenario})",
            {
                r: fmt(_get(sc, scenario, r, "cpu_us_per_event"), 1)
                + _x(_get(sc, scenario, r, "x_floor", "cpu_us_per_event"))
                for r in RELAYS
            },
        )
    worst = {
        r: max(
            (
                v
                for name in SATURATING
                if (v := _get(sc, name, r, "x_floor", "cpu_us_per_event")) is not None
            ),
            default=None,
        )
        for r in RELAYS
    }
    out.row(
        "worst CPU x floor (saturating scenarios)",
        {r: fmt(worst[r]) for r in RELAYS},
        "≤ 1.5x",
        tuple(_verdict(worst[m], 1.5) for m in GATEWAY_MODES),
    )
    p99 = {r: _get(sc, "paced-c1000", r, "added_ms", "p99") for r in RELAYS}
    out.row(
        "added latency P99 per event, 1,000 sockets (ms)",
        {r: fmt(p99[r], 3) + _x(_get(sc, "paced-c1000", r, "x_direct", "lat_p99")) for r in RELAYS},
        "< 1 ms",
        tuple(_verdict(p99[m], 1.0) for m in GATEWAY_MODES),
    )
    for scenario, label in (("paced-c1000", "1,000"), ("paced-c100", "100"), ("paced-c1", "1")):
        out.row(
            f"added latency P50 / P95 / P99, {label} sockets (ms)",
            {
                r: " / ".join(
                    fmt(_get(sc, scenario, r, "added_ms", q), 3) for q in ("p50", "p95", "p99")
                )
                for r in RELAYS
            },
        )
    out.row(
        "added TTFT P50 / P99, 100 sockets (ms)",
        {
            r: " / ".join(
                fmt(_get(sc, "paced-c100", r, "ttft_added_ms", q), 3) for q in ("p50", "p99")
            )
            for r in RELAYS
        },
    )
    for scenario, key, what in (
        ("text-c100", "turns_per_s", "turns/s"),
        ("stream200-c100", "events_per_s", "events/s"),
    ):
        out.row(
            f"{what} at saturation ({scenario})",
            {
                r: fmt(_get(sc, scenario, r, key), 0)
                + _x(_get(sc, scenario, r, "x_direct", "turns_per_s"))
                for r in RELAYS
            },
        )
    alloc = data.get("alloc", {})
    for key, label in (
        ("net_blocks_per_turn", "allocations retained per turn (tracemalloc blocks, net)"),
        ("net_bytes_per_turn", "bytes retained per turn (net)"),
        ("peak_bytes_per_turn_in_flight", "peak traced bytes per turn in flight"),
    ):
        base = _get(alloc, "floor", key)
        cells = {}
        for r in RELAYS:
            value = _get(alloc, r, key)
            ratio = value / base if value is not None and base and base > 0 else None
            cells[r] = fmt(value, 1) + _x(ratio)
        out.row(label, cells)
    faults = data.get("faults", {})
    for key, label, target, limit, good_high in (
        ("retry_attempts_per_turn", "faults: retry_attempts per turn", "≤ 1.2", 1.2, False),
        ("retry_exhausted_pct", "faults: retry_exhausted %", "≤ 0.5 %", 0.5, False),
        ("fallback_rate_pct", "faults: fallback_rate %", "", float("inf"), False),
        (
            "client_visible_failure_pct",
            "faults: client-visible failures %",
            "",
            float("inf"),
            False,
        ),
        ("pool_reuse_pct", "faults: pool reuse %", "≥ 75 %", 75.0, True),
    ):
        values = {m: _get(faults, m, key) for m in GATEWAY_MODES}
        out.row(
            label,
            {m: fmt(v, 3) for m, v in values.items()},
            target,
            tuple(_verdict(values[m], limit, good_high) for m in GATEWAY_MODES),
        )
    out.lines.append("")
    return out.lines


def scenario_tables(data: dict[str, Any]) -> list[str]:
    lines = ["## Per scenario", ""]
    for name, row in data["scenarios"].items():
        lines += [
            f"### {name}",
            "",
            "| path | events | CPU µs/event (x floor) | relay CPU % | load CPU % |"
            " lat p50 / p95 / p99 (ms) | added p50 / p95 / p99 (ms) | TTFT p50 / p99 (ms) |"
            " turns/s (x direct) | events/s | errors |",
            "|---|---:|---:|---:|---:|---|---|---|---:|---:|---:|",
        ]
        for label, d in row.items():
            lat, add, ttft = d["lat_ms"], d["added_ms"], d["ttft_ms"]
            lines.append(
                f"| {label} | {d['events']} | {fmt(d['cpu_us_per_event'], 1)}"
                f"{_x(_get(d, 'x_floor', 'cpu_us_per_event'))} | "
                f"{fmt(d.get('relay_cpu_util_pct'), 0)} | {fmt(d.get('load_cpu_util_pct'), 0)} | "
                f"{fmt(lat['p50'], 3)} / {fmt(lat['p95'], 3)} / {fmt(lat['p99'], 3)} | "
                f"{fmt(add['p50'], 3)} / {fmt(add['p95'], 3)} / {fmt(add['p99'], 3)} | "
                f"{fmt(ttft['p50'])} / {fmt(ttft['p99'])} | {fmt(d['turns_per_s'], 1)}"
                f"{_x(_get(d, 'x_direct', 'turns_per_s'))} | {fmt(d['events_per_s'], 0)} |"
                f" {d['errors']} |"
            )
        lines.append("")
    return lines


def alloc_and_profile(data: dict[str, Any]) -> list[str]:
    alloc = data.get("alloc")
    if not alloc:
        return []
    lines = [
        "## Allocations (tracemalloc in the in-process host, bench/inproc.py)",
        "",
        "10 sockets x short text turns (20 deltas); snapshots around the batch via the host's"
        " control socket, after a gc. *Net* = still allocated after the batch (leak check);"
        " *peak* = highest traced memory during the batch above the baseline, per turn in flight.",
        "",
        "| relay | turns | net blocks/turn | net bytes/turn | peak bytes/turn in flight |"
        " largest retained sites |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for label, a in alloc.items():
        sites = ", ".join(f"`{s['site']}` {s['bytes']:+,} B" for s in a["top_retained"][:3])
        lines.append(
            f"| {label} | {a['turns']} | {fmt(a['net_blocks_per_turn'], 1)} | "
            f"{fmt(a['net_bytes_per_turn'], 0)} | {fmt(a['peak_bytes_per_turn_in_flight'], 0)} |"
            f" {sites} |"
        )
    lines.append("")
    for label in ("ctx_pool", "passthrough", "floor"):
        prof = _get(alloc, label, "profile")
        if not prof:
            continue
        lines += [
            f"### cProfile of the {label} relay process"
            f" ({prof['turns']} turns, {prof['events']} events; own time)",
            "",
            "| function | calls | own s | share |",
            "|---|---:|---:|---:|",
        ]
        for fn in prof["top"][:10]:
            lines.append(
                f"| `{fn['function']}` | {fn['calls']:,} | {fn['tottime_s']:.3f} |"
                f" {fn['share_pct']:.1f} % |"
            )
        lines.append("")
    return lines


def faults_table(data: dict[str, Any]) -> list[str]:
    faults = data.get("faults")
    if not faults:
        return []
    lines = [
        "## Fault injection",
        "",
        "5% of upstream dials refused with 503, 2% of streams closed 1011 before their first"
        " event (seeded probabilities in the simulator); 20 clients reconnecting every 5 turns."
        " Figures from the gateway's GET /metrics.",
        "",
        "| figure | passthrough | ctx_pool |",
        "|---|---:|---:|",
    ]
    for key in (
        "turns",
        "turns_completed",
        "client_turns_ok",
        "retry_attempts_per_turn",
        "retry_exhausted_pct",
        "fallback_rate_pct",
        "pool_reuse_pct",
        "client_errors",
        "client_connect_failures",
        "client_visible_failure_pct",
        "upstream_dials",
        "pool_reuse_source",
        "faults_fired",
    ):
        lines.append(
            f"| {key} | " + " | ".join(fmt(_get(faults, m, key), 3) for m in GATEWAY_MODES) + " |"
        )
    lines.append("")
    return lines


def pool_table(data: dict[str, Any]) -> list[str]:
    rows = data.get("pool_acquire") or []
    if not rows or "error" in rows[0]:
        return ["## Pool acquire", "", f"not measured: {rows[0]['error'] if rows else '-'}", ""]
    lines = [
        "## Pool acquire + release (bench/pool_bench.py, ns, p50)",
        "",
        "| idle conns | any | preferred |",
        "|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {int(r['size']):,} | {r['acquire_release_ns_p50']:,.0f} |"
            f" {r['preferred_ns_p50']:,.0f} |"
        )
    ratio = rows[-1]["acquire_release_ns_p50"] / rows[0]["acquire_release_ns_p50"]
    return [*lines, "", f"10k/10 ratio: {ratio:.2f} (target ≤ 2)", ""]


def markdown(data: dict[str, Any]) -> str:
    m = data["machine"]
    how = "make bench-quick" if data["quick"] else "make bench"
    lines = [
        "# Benchmarks",
        "",
        f"Produced by `{how}` on {data['date']} at commit `{data['commit']}` in"
        f" {data.get('elapsed_s', '-')} s (JSON in `bench/results/`; compare two runs with"
        " `.venv/bin/python -m bench.compare OLD.json NEW.json`). Machine: "
        f"{m['cores']} cores ({m.get('cpu_model', '-')}), Python {m['python']}, {m['platform']}; "
        + ", ".join(f"{k} {v}" for k, v in m["packages"].items())
        + ".",
        "",
        "Method: the same scripted Responses-WebSocket traffic four ways: direct to the"
        " simulator; through the floor (bench/floor_relay.py: the same uvicorn/uvloop/"
        "websockets-sansio stack and the gateway's own upstream client, frames copied with no"
        " parsing); through the gateway in `passthrough`; in `ctx_pool`. Relays are pinned to"
        f" CPU {m.get('relay_cpu', 0)}; the simulator and the load generator (its own process)"
        f" to CPU {m.get('load_cpu', 1)}. Latency per event = client receive time minus the"
        " simulator's `sim_t_ns` stamp; *added* = through-path percentile minus the direct"
        " percentile on the same scripted events (slightly negative = noise). CPU per event ="
        " relay process CPU time (/proc/<pid>/schedstat) over the run / events relayed."
        " *relay CPU %* near 100 = the relay was the bottleneck; *load CPU %* near 100 = the"
        " simulator + clients were. Paced scenarios: every socket warmed, then streams staggered"
        " evenly in phase (1,000 sockets: one event per socket every 500 ms = 2,000 events/s).",
        "",
    ]
    lines += summary(data)
    lines += scenario_tables(data)
    lines += alloc_and_profile(data)
    lines += faults_table(data)
    lines += pool_table(data)
    return "\n".join(lines)
