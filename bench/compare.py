"""Regression gate: compare two ``make bench`` result files.

    .venv/bin/python -m bench.compare OLD.json NEW.json [--tolerance cpu=0.15 ...]

A figure "got worse" when it moved in its bad direction by more than its tolerance
(relative for costs and rates, absolute percentage points for percentages). Exit 1
when anything regressed, so a release can be judged against the last one.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

# kind -> (tolerance, higher_is_worse, relative)
DEFAULT_TOLERANCE: dict[str, tuple[float, bool, bool]] = {
    "cpu": (0.15, True, True),  # CPU µs per event
    "latency": (0.25, True, True),  # added latency percentiles (noisy: wide band)
    "throughput": (0.15, False, True),  # turns/s
    "retry": (0.05, True, False),  # attempts per turn, absolute
    "pct_bad": (0.5, True, False),  # retry_exhausted %, fallback %, absolute points
    "pct_good": (5.0, False, False),  # pool reuse %, absolute points
}


@dataclass(frozen=True)
class Finding:
    figure: str
    old: float
    new: float
    kind: str

    def __str__(self) -> str:
        return f"{self.figure}: {self.old:.4g} -> {self.new:.4g} ({self.kind})"


def figures(result: dict[str, Any]) -> Iterator[tuple[str, str, float]]:
    """(name, kind, value) for every comparable figure in a result file."""
    for scenario, row in result.get("scenarios", {}).items():
        for path, data in row.items():
            if path == "direct":
                continue
            if data.get("cpu_us_per_event") is not None:
                yield f"{scenario}/{path}/cpu_us_per_event", "cpu", float(data["cpu_us_per_event"])
            for q in ("p95", "p99"):
                value = data.get("added_ms", {}).get(q)
                if value is not None:
                    yield f"{scenario}/{path}/added_{q}_ms", "latency", max(float(value), 0.001)
            yield (
                f"{scenario}/{path}/turns_per_s",
                "throughput",
                float(data.get("turns_per_s", 0.0)),
            )
    faults = result.get("faults") or {}
    if faults.get("retry_attempts_per_turn") is not None:
        yield "faults/retry_attempts_per_turn", "retry", float(faults["retry_attempts_per_turn"])
    for key in ("retry_exhausted_pct", "fallback_rate_pct"):
        if faults.get(key) is not None:
            yield f"faults/{key}", "pct_bad", float(faults[key])
    if faults.get("pool_reuse_pct") is not None:
        yield "faults/pool_reuse_pct", "pct_good", float(faults["pool_reuse_pct"])


def compare(
    old: dict[str, Any],
    new: dict[str, Any],
    tolerance: dict[str, tuple[float, bool, bool]] | None = None,
) -> list[Finding]:
    tol = {**DEFAULT_TOLERANCE, **(tolerance or {})}
    before = {name: (kind, value) for name, kind, value in figures(old)}
    worse = []
    for name, kind, value in figures(new):
        if name not in before:
            continue
        _, old_value = before[name]
        limit, higher_is_worse, relative = tol[kind]
        delta = value - old_value if higher_is_worse else old_value - value
        allowed = abs(old_value) * limit if relative else limit
        if delta > allowed:
            worse.append(Finding(name, old_value, value, kind))
    return worse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compare")
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--tolerance", action="append", default=[], help="kind=value, e.g. cpu=0.2")
    args = parser.parse_args(argv)
    overrides = {}
    for item in args.tolerance:
        kind, _, value = item.partition("=")
        base = DEFAULT_TOLERANCE[kind]
        overrides[kind] = (float(value), base[1], base[2])
    with open(args.old) as f_old, open(args.new) as f_new:
        findings = compare(json.load(f_old), json.load(f_new), overrides)
    for finding in findings:
        print(f"REGRESSION {finding}")
    if not findings:
        print("no regression beyond noise")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
