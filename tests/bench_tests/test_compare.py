"""The regression gate's logic on small synthetic result files (no timing)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.compare import compare, main


def result(
    cpu: float = 20.0,
    p99: float = 0.4,
    tps: float = 500.0,
    blocks: float = 10.0,
    retry: float = 1.03,
    exhausted: float = 0.0,
    reuse: float = 88.0,
) -> dict[str, Any]:
    return {
        "scenarios": {
            "text-c100": {
                "direct": {"turns_per_s": 900.0, "cpu_us_per_event": None},
                "ctx_pool": {"cpu_us_per_event": cpu, "turns_per_s": tps},
            },
            "paced-c1000": {
                "ctx_pool": {"cpu_us_per_event": None, "added_ms": {"p50": 0.1, "p99": p99}}
            },
        },
        "alloc": {"ctx_pool": {"net_blocks_per_turn": blocks}},
        "faults": {
            "ctx_pool": {
                "retry_attempts_per_turn": retry,
                "retry_exhausted_pct": exhausted,
                "fallback_rate_pct": 0.0,
                "pool_reuse_pct": reuse,
            }
        },
    }


def test_noise_is_not_a_regression() -> None:
    old = result()
    new = result(cpu=21.0, p99=0.6, tps=460.0, blocks=11.5, retry=1.06, exhausted=0.3, reuse=85.0)
    assert compare(old, new) == []


def test_each_kind_of_regression_is_flagged() -> None:
    old = result()
    new = result(cpu=30.0, p99=2.0, tps=300.0, blocks=40.0, retry=1.2, exhausted=1.0, reuse=70.0)
    assert {f.figure for f in compare(old, new)} == {
        "text-c100/ctx_pool/cpu_us_per_event",
        "text-c100/ctx_pool/turns_per_s",
        "paced-c1000/ctx_pool/added_p99_ms",
        "alloc/ctx_pool/net_blocks_per_turn",
        "faults/ctx_pool/retry_attempts_per_turn",
        "faults/ctx_pool/retry_exhausted_pct",
        "faults/ctx_pool/pool_reuse_pct",
    }


def test_figures_missing_from_the_old_run_are_not_compared() -> None:
    old = result()
    del old["alloc"]
    assert compare(old, result(blocks=1000.0)) == []


def test_improvements_pass_and_cli_exit_codes(tmp_path: Path) -> None:
    old, better, worse = tmp_path / "old.json", tmp_path / "better.json", tmp_path / "worse.json"
    old.write_text(json.dumps(result(retry=1.1, exhausted=0.3, reuse=80.0)))
    better.write_text(json.dumps(result(cpu=10.0, p99=0.1, tps=900.0, blocks=1.0, retry=1.0)))
    worse.write_text(json.dumps(result(cpu=40.0, retry=1.1, exhausted=0.3, reuse=80.0)))
    assert main([str(old), str(better)]) == 0
    assert main([str(old), str(worse)]) == 1
    assert main([str(old), str(worse), "--tolerance", "cpu=2.0"]) == 0
    assert main([str(old), str(worse), "--slack", "cpu=25"]) == 0


def test_the_peer_is_not_gated_and_ttft_c50_is() -> None:
    def run(peer_cpu: float, ttft_p50: float) -> dict[str, Any]:
        return {
            "scenarios": {
                "ttft-c50": {
                    "LiteLLM": {"cpu_us_per_event": peer_cpu},
                    "ctx_pool": {"cpu_us_per_event": 20.0, "ttft_added_ms": {"p50": ttft_p50}},
                }
            }
        }

    worse = compare(run(100.0, 0.2), run(300.0, 2.0))
    assert [f.figure for f in worse] == ["ttft-c50/ctx_pool/ttft_added_p50_ms"]
