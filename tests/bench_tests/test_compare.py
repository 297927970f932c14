"""The regression gate's logic on small synthetic result files (no timing)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.compare import compare, main


def result(
    cpu: float, p99: float, tps: float, retry: float, exhausted: float, reuse: float
) -> dict[str, Any]:
    path = {"cpu_us_per_event": cpu, "added_ms": {"p95": p99 / 2, "p99": p99}, "turns_per_s": tps}
    return {
        "scenarios": {"text-c1": {"direct": {"turns_per_s": 900.0}, "ctx_pool": path}},
        "faults": {
            "retry_attempts_per_turn": retry,
            "retry_exhausted_pct": exhausted,
            "fallback_rate_pct": 0.0,
            "pool_reuse_pct": reuse,
        },
    }


def test_noise_is_not_a_regression() -> None:
    old = result(20.0, 0.4, 500.0, 1.03, 0.0, 88.0)
    new = result(21.0, 0.45, 480.0, 1.05, 0.2, 86.0)
    assert compare(old, new) == []


def test_each_kind_of_regression_is_flagged() -> None:
    old = result(20.0, 0.4, 500.0, 1.03, 0.0, 88.0)
    new = result(30.0, 0.9, 300.0, 1.2, 1.0, 70.0)
    names = {f.figure for f in compare(old, new)}
    assert names == {
        "text-c1/ctx_pool/cpu_us_per_event",
        "text-c1/ctx_pool/added_p95_ms",
        "text-c1/ctx_pool/added_p99_ms",
        "text-c1/ctx_pool/turns_per_s",
        "faults/retry_attempts_per_turn",
        "faults/retry_exhausted_pct",
        "faults/pool_reuse_pct",
    }


def test_improvements_pass_and_cli_exit_codes(tmp_path: Path) -> None:
    old, better, worse = tmp_path / "old.json", tmp_path / "new.json", tmp_path / "worse.json"
    old.write_text(json.dumps(result(20.0, 0.4, 500.0, 1.1, 0.3, 80.0)))
    better.write_text(json.dumps(result(10.0, 0.2, 900.0, 1.0, 0.0, 95.0)))
    worse.write_text(json.dumps(result(40.0, 0.4, 500.0, 1.1, 0.3, 80.0)))
    assert main([str(old), str(better)]) == 0
    assert main([str(old), str(worse)]) == 1
    assert main([str(old), str(worse), "--tolerance", "cpu=2.0"]) == 0
