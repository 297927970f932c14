"""Several rounds of one scenario become one row: medians of same-round figures."""

from __future__ import annotations

from typing import Any

from bench.rounds import combine_rounds, round_order


def relay(cpu: float | None, x_floor: float | None, ttft_added: float) -> dict[str, Any]:
    return {
        "cpu_us_per_event": cpu,
        "events": 100,
        "x_floor": {"cpu_us_per_event": x_floor, "lat_p99": 1.0},
        "ttft_added_ms": {"p50": ttft_added, "p95": 2 * ttft_added},
    }


def test_the_direct_path_stays_first_and_the_rest_alternate() -> None:
    items = ["direct", "floor", "passthrough", "ctx_pool"]
    assert round_order(items, 0) == items
    assert round_order(items, 1) == ["direct", "ctx_pool", "passthrough", "floor"]
    assert round_order(items, 2) == items


def test_each_figure_is_the_median_over_the_rounds() -> None:
    rounds = [
        {"floor": relay(20.0, 1.0, 0.1), "ctx_pool": relay(30.0, 1.5, 0.3)},
        {"floor": relay(30.0, 1.0, 0.2), "ctx_pool": relay(33.0, 1.1, 0.2)},
        {"floor": relay(25.0, 1.0, 0.15), "ctx_pool": relay(27.5, 1.1, 0.9)},
    ]
    row = combine_rounds(rounds)
    ctx = row["ctx_pool"]
    # medians of 30/33/27.5, of the same-round ratios 1.5/1.1/1.1, of 0.3/0.2/0.9
    assert ctx["cpu_us_per_event"] == 30.0
    assert ctx["x_floor"] == {"cpu_us_per_event": 1.1, "lat_p99": 1.0}
    assert ctx["ttft_added_ms"] == {"p50": 0.3, "p95": 0.6}
    assert ctx["events"] == 100 and ctx["rounds"] == 3
    assert row["floor"]["cpu_us_per_event"] == 25.0
    assert rounds[0]["ctx_pool"]["cpu_us_per_event"] == 30.0  # the inputs are untouched


def test_a_relay_measured_in_fewer_rounds_keeps_its_own_figures() -> None:
    rounds = [
        {"floor": relay(20.0, 1.0, 0.1), "LiteLLM": relay(60.0, 3.0, 0.5)},
        {"floor": relay(22.0, 1.0, 0.1)},
    ]
    row = combine_rounds(rounds)
    assert row["LiteLLM"]["cpu_us_per_event"] == 60.0 and row["LiteLLM"]["rounds"] == 1
    assert row["floor"]["cpu_us_per_event"] == 21.0 and row["floor"]["rounds"] == 2


def test_missing_figures_are_skipped_not_counted_as_zero() -> None:
    rounds = [{"direct": relay(None, None, 0.0)}, {"direct": relay(None, None, 0.0)}]
    row = combine_rounds(rounds)
    assert row["direct"]["cpu_us_per_event"] is None
    assert row["direct"]["x_floor"]["cpu_us_per_event"] is None
