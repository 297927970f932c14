"""Metrics on the hot path: labelled children resolved once, added latency sampled."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from gateway.telemetry import ADDED_LATENCY_SAMPLE_EVERY, Metrics, SampledHistogram


def _value(metrics: Metrics, name: str, labels: dict[str, str]) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_labels_returns_the_same_registered_child_every_time() -> None:
    metrics = Metrics(accounts=["acct-a"])
    first = metrics.turns.labels("ctx_pool", "completed")
    assert metrics.turns.labels("ctx_pool", "completed") is first
    first.inc()
    metrics.turns.labels("ctx_pool", "completed").inc(2)
    assert _value(metrics, "gateway_turns_total", {"mode": "ctx_pool", "outcome": "completed"}) == 3


def test_keyword_labels_reach_the_same_series() -> None:
    metrics = Metrics()
    metrics.turns.labels(mode="passthrough", outcome="completed").inc()
    metrics.turns.labels("passthrough", "completed").inc()
    labels = {"mode": "passthrough", "outcome": "completed"}
    assert _value(metrics, "gateway_turns_total", labels) == 2


def test_a_new_label_set_is_created_and_then_reused() -> None:
    metrics = Metrics()
    child = metrics.client_errors.labels("some_new_code")
    child.inc()
    assert metrics.client_errors.labels("some_new_code") is child
    assert _value(metrics, "gateway_client_errors_total", {"code": "some_new_code"}) == 1


def test_wrong_label_count_still_raises() -> None:
    metrics = Metrics()
    with pytest.raises(ValueError):
        metrics.turns.labels("ctx_pool")
    with pytest.raises(ValueError):
        metrics.turns.labels("ctx_pool")  # not cached after a failure


def _draws(values: list[float]) -> Iterator[float]:
    yield from values


def test_added_latency_keeps_the_events_whose_draw_falls_under_one_in_every(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    every = ADDED_LATENCY_SAMPLE_EVERY
    draws = [0.0, 0.99, 0.5 / every, 1.0 / every, 0.7, 0.999 / every]
    source = _draws(draws)
    monkeypatch.setattr(SampledHistogram, "draw", staticmethod(lambda: next(source)))
    metrics = Metrics()
    child = metrics.added_latency.labels("ctx_pool")
    for _ in draws:
        child.observe(0.0002)
    kept = 3  # 0.0, 0.5/every and 0.999/every are below 1/every
    labels = {"mode": "ctx_pool"}
    assert _value(metrics, "gateway_added_latency_seconds_count", labels) == kept
    assert _value(metrics, "gateway_added_latency_seconds_sum", labels) == pytest.approx(
        kept * 0.0002
    )
    assert _value(metrics, "gateway_relayed_events_total", labels) == 0  # counted elsewhere


def test_sampling_every_one_observes_everything(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(SampledHistogram, "every", 1)
    registry = CollectorRegistry()
    hist = SampledHistogram("h_seconds", "h", ["mode"], registry=registry)
    for _ in range(5):
        hist.labels("x").observe(0.001)
    assert registry.get_sample_value("h_seconds_count", {"mode": "x"}) == 5


def test_the_help_text_says_it_is_a_sample() -> None:
    text = Metrics().render().decode()
    help_line = next(
        line for line in text.splitlines() if line.startswith("# HELP gateway_added_latency")
    )
    assert f"1 in {ADDED_LATENCY_SAMPLE_EVERY}" in help_line
