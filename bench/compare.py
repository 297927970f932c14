"""Regression gate: compare two ``make bench`` result files.

    .venv/bin/python -m bench.compare OLD.json NEW.json [--tolerance cpu=0.2 --slack latency=0.5]

A figure "got worse" when it moved in its bad direction by more than
max(relative tolerance x |old|, absolute slack) for its kind. The slack keeps figures
near zero (added latency, retained allocations) from flagging noise. Exit 1 when
anything regressed, so a change can be judged against the last run.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from bench.litellm_target import LABEL as PEER


@dataclass(frozen=True)
class Tolerance:
    relative: float  # fraction of the old value
    slack: float  # absolute, in the figure's unit
    higher_is_worse: bool


DEFAULT_TOLERANCE: dict[str, Tolerance] = {
    "cpu": Tolerance(0.15, 1.0, True),  # CPU µs per event
    "latency": Tolerance(0.30, 0.3, True),  # added latency / TTFT percentiles, ms (noisy)
    "throughput": Tolerance(0.15, 0.0, False),  # turns/s, events/s
    "alloc": Tolerance(0.25, 2.0, True),
    "stage": Tolerance(
        0.30, 10.0, True
    ),  # µs per turn stage (bench/stages.py), wall p50  # blocks or bytes per turn (slack: 2 of the unit)
    "retry": Tolerance(0.0, 0.05, True),  # attempts per turn
    "pct_bad": Tolerance(0.0, 0.5, True),  # retry_exhausted %, fallback %: points
    "pct_good": Tolerance(0.0, 5.0, False),  # pool reuse %: points
}


@dataclass(frozen=True)
class Finding:
    figure: str
    old: float
    new: float
    kind: str

    def __str__(self) -> str:
        return f"{self.figure}: {self.old:.4g} -> {self.new:.4g} ({self.kind})"


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def figures(result: dict[str, Any]) -> Iterator[tuple[str, str, float]]:
    """(name, kind, value) for every comparable figure in a result file."""
    for scenario, row in result.get("scenarios", {}).items():
        for path, data in row.items():
            if path in ("direct", PEER):  # the baseline and the peer are not ours to gate
                continue
            prefix = f"{scenario}/{path}"
            if (v := _num(data.get("cpu_us_per_event"))) is not None:
                yield f"{prefix}/cpu_us_per_event", "cpu", v
            # latency only where the relays are not saturated
            if scenario.startswith(("paced", "turn", "ttft")):
                for q in ("p50", "p99"):
                    if (v := _num(data.get("added_ms", {}).get(q))) is not None:
                        yield f"{prefix}/added_{q}_ms", "latency", v
                    if (v := _num(data.get("ttft_added_ms", {}).get(q))) is not None:
                        yield f"{prefix}/ttft_added_{q}_ms", "latency", v
            else:
                for key in ("turns_per_s", "events_per_s"):
                    if (v := _num(data.get(key))) is not None:
                        yield f"{prefix}/{key}", "throughput", v
    for stage, value in (
        ((result.get("stages") or {}).get("continuation") or {}).get("p50_us", {}).items()
    ):
        if (v := _num(value)) is not None:
            yield f"stages/continuation/{stage}_us", "stage", v
    bare = ((result.get("stages") or {}).get("bare") or {}).get("continuation") or {}
    for stage, value in (bare.get("p50_us") or {}).items():
        if (v := _num(value)) is not None:
            yield f"stages/bare/{stage}_us", "stage", v
    for relay, data in (result.get("alloc") or {}).items():
        for key in ("net_blocks_per_turn", "peak_bytes_per_turn_in_flight"):
            if (v := _num(data.get(key))) is not None:
                yield f"alloc/{relay}/{key}", "alloc", v
    for mode, faults in (result.get("faults") or {}).items():
        for key, kind in (
            ("retry_attempts_per_turn", "retry"),
            ("retry_exhausted_pct", "pct_bad"),
            ("fallback_rate_pct", "pct_bad"),
            ("client_visible_failure_pct", "pct_bad"),
            ("pool_reuse_pct", "pct_good"),
        ):
            if isinstance(faults, dict) and (v := _num(faults.get(key))) is not None:
                yield f"faults/{mode}/{key}", kind, v


def compare(
    old: dict[str, Any], new: dict[str, Any], tolerance: dict[str, Tolerance] | None = None
) -> list[Finding]:
    tol = {**DEFAULT_TOLERANCE, **(tolerance or {})}
    before = {name: value for name, _, value in figures(old)}
    worse = []
    for name, kind, value in figures(new):
        if name not in before:
            continue  # a figure the old run did not have: nothing to compare against
        old_value, t = before[name], tol[kind]
        delta = value - old_value if t.higher_is_worse else old_value - value
        if delta > max(abs(old_value) * t.relative, t.slack):
            worse.append(Finding(name, old_value, value, kind))
    return worse


def _overrides(relative: list[str], slack: list[str]) -> dict[str, Tolerance]:
    out = dict(DEFAULT_TOLERANCE)
    for items, field in ((relative, "relative"), (slack, "slack")):
        for item in items:
            kind, _, value = item.partition("=")
            if kind not in out:
                raise SystemExit(f"unknown figure kind {kind!r}; known: {sorted(out)}")
            base = out[kind]
            out[kind] = Tolerance(
                float(value) if field == "relative" else base.relative,
                float(value) if field == "slack" else base.slack,
                base.higher_is_worse,
            )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compare")
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument(
        "--tolerance", action="append", default=[], help="kind=fraction, e.g. cpu=0.2"
    )
    parser.add_argument(
        "--slack", action="append", default=[], help="kind=absolute, e.g. latency=0.5"
    )
    args = parser.parse_args(argv)
    with open(args.old) as f_old, open(args.new) as f_new:
        findings = compare(
            json.load(f_old), json.load(f_new), _overrides(args.tolerance, args.slack)
        )
    for finding in findings:
        print(f"REGRESSION {finding}")
    if not findings:
        print("no regression beyond noise")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
