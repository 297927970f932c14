"""The detail sections of docs/benchmarks.md: every scenario, allocations and profiles,
fault injection, pool acquire."""

from __future__ import annotations

from typing import Any

from bench.formatting import dig, fmt, ratio
from bench.litellm_target import UNPATCHED_ERROR

GATEWAY_MODES = ("passthrough", "ctx_pool")


def peer_method(data: dict[str, Any], short: bool = False) -> str:
    """How LiteLLM ran, or why it did not: a phrase for the README, a paragraph for the doc."""
    peer = data.get("litellm") or {}
    status, version = peer.get("status", "not run"), peer.get("version")
    if status == "not installed" or not version:
        return (
            f"LiteLLM {status}: `make bench-litellm-deps` installs it into `.venv-litellm`"
            " (or run the bench with BENCH_LITELLM=1)"
        )
    if short:
        return (
            f"LiteLLM {version}: logging, callbacks, database and spend tracking off; one shim"
            " lets it dial the simulator's ws:// at all, see the method in the docs"
        )
    settings = peer.get("settings", {})
    return (
        f"**LiteLLM** {version}'s proxy (`bench/litellm_target.py`, in a venv of its own,"
        " `.venv-litellm` from `make bench-litellm-deps`) in its Responses WebSocket mode:"
        " clients open `/v1/responses` over WebSocket as the Codex CLI does, LiteLLM reads"
        " the model from the first `response.create`, dials the simulator's `/v1/responses`"
        " over WebSocket (model `bench` -> `openai/bench`) and forwards frames both ways,"
        " decoding each event. Its fastest honest config: "
        + "; ".join(f"{k}: {v}" for k, v in settings.items())
        + ". As shipped LiteLLM cannot dial a plain `ws://` upstream at all (the first"
        f" `response.create` gets `{UNPATCHED_ERROR}`), so it runs with one shim: "
        + str(peer.get("shim", "-"))
        + "."
    )


def peer_notes(data: dict[str, Any]) -> list[str]:
    """LiteLLM's failures, when there were any: which scenario, what error."""
    peer = data.get("litellm") or {}
    errors = peer.get("scenario_errors") or {}
    status = str(peer.get("status", ""))
    if not errors and not status.startswith("failed"):
        return []
    lines = ["## LiteLLM: what did not run", ""]
    if status.startswith("failed"):
        lines += [f"{status}", "", "```", str(peer.get("log_tail", ""))[-1500:], "```", ""]
    lines += [f"- `{name}`: {error}" for name, error in errors.items()]
    return [*lines, ""]


def scenario_tables(data: dict[str, Any]) -> list[str]:
    lines = ["## Per scenario", ""]
    for name, row in data["scenarios"].items():
        lines += [
            f"### {name}",
            "",
            "| path | events | CPU µs/event (x floor) | relay CPU % | load CPU % |"
            " lat p50 / p95 / p99 (ms) | added p50 / p95 / p99 (ms) | TTFT p50 / p99 (ms) |"
            " turn p50 (ms) | turns/s (x direct) | events/s | errors |",
            "|---|---:|---:|---:|---:|---|---|---|---:|---:|---:|---:|",
        ]
        for label, d in row.items():
            lat, add, ttft = d["lat_ms"], d["added_ms"], d["ttft_ms"]
            lines.append(
                f"| {label} | {d['events']} | {fmt(d['cpu_us_per_event'], 1)}"
                f"{ratio(dig(d, 'x_floor', 'cpu_us_per_event'))} | "
                f"{fmt(d.get('relay_cpu_util_pct'), 0)} | {fmt(d.get('load_cpu_util_pct'), 0)} | "
                f"{fmt(lat['p50'], 3)} / {fmt(lat['p95'], 3)} / {fmt(lat['p99'], 3)} | "
                f"{fmt(add['p50'], 3)} / {fmt(add['p95'], 3)} / {fmt(add['p99'], 3)} | "
                f"{fmt(ttft['p50'])} / {fmt(ttft['p99'])} |"
                f" {fmt(dig(d, 'turn_ms', 'p50'), 3)} | {fmt(d['turns_per_s'], 1)}"
                f"{ratio(dig(d, 'x_direct', 'turns_per_s'))} | {fmt(d['events_per_s'], 0)} |"
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
        prof = dig(alloc, label, "profile")
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
            f"| {key} | " + " | ".join(fmt(dig(faults, m, key), 3) for m in GATEWAY_MODES) + " |"
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
