"""Metrics on the hot path: labelled children resolved once, added latency sampled."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
from prometheus_client.parser import text_string_to_metric_families

from gateway.telemetry import (
    ADDED_LATENCY_SAMPLE_EVERY,
    LATENCY_BUCKETS,
    MULTIPROC_ENV,
    CachedCounter,
    CachedGauge,
    CachedHistogram,
    Metrics,
    SampledHistogram,
)


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


# Lock-free updates: whatever the gateway's classes record must render exactly as stock
# prometheus-client records the same operations (the reference, built here).

BOUNDS = [float(b) for b in LATENCY_BUCKETS]
AROUND_BOUNDS = [
    *BOUNDS,  # exactly on a bound: that bound's bucket (le)
    *(math.nextafter(b, math.inf) for b in BOUNDS),  # just above: the next one
    *(math.nextafter(b, -math.inf) for b in BOUNDS),
    0.0,
    -1.0,
    100.0,  # past the last finite bound: +Inf only
    math.inf,
    1e-9,
]


def _exposition(registry: CollectorRegistry) -> list[str]:
    """The text exposition without ``_created`` lines (creation times differ)."""
    text = generate_latest(registry).decode()
    return [line for line in text.splitlines() if "_created" not in line]


def _samples(registry: CollectorRegistry) -> list[tuple[Any, ...]]:
    """Every sample with its exemplar's labels and value (the exemplar's time differs)."""
    out: list[tuple[Any, ...]] = []
    for metric in registry.collect():
        for s in metric.samples:
            if not s.name.endswith("_created"):
                ex = s.exemplar and (s.exemplar.labels, s.exemplar.value)
                out.append((s.name, s.labels, repr(s.value), ex))  # repr: NaN == NaN
    return out


class Pair:
    """The same metrics twice: the gateway's classes and the stock ones."""

    def __init__(self) -> None:
        self.ours, self.stock = CollectorRegistry(), CollectorRegistry()

    def make(self, kinds: tuple[type[Any], type[Any]], *args: Any, **kwargs: Any) -> Any:
        return (
            kinds[0](*args, registry=self.ours, **kwargs),
            kinds[1](*args, registry=self.stock, **kwargs),
        )

    def assert_same(self) -> None:
        assert _exposition(self.ours) == _exposition(self.stock)
        assert _samples(self.ours) == _samples(self.stock)


COUNTER = (CachedCounter, Counter)
GAUGE = (CachedGauge, Gauge)
HISTOGRAM = (CachedHistogram, Histogram)


def test_scripted_updates_render_as_stock_prometheus_client() -> None:
    pair = Pair()
    turns = pair.make(COUNTER, "turns", "t", ["mode", "outcome"])
    plain = pair.make(COUNTER, "plain", "p")
    sockets = pair.make(GAUGE, "sockets", "s")
    state = pair.make(GAUGE, "state", "s", ["account"], multiprocess_mode="livemax")
    latency = pair.make(HISTOGRAM, "lat_seconds", "l", ["mode"], buckets=LATENCY_BUCKETS)
    bare = pair.make(HISTOGRAM, "bare_seconds", "b")  # the library's default buckets
    for ours_or_stock in (0, 1):
        t, p, s = turns[ours_or_stock], plain[ours_or_stock], sockets[ours_or_stock]
        t.labels("ctx_pool", "completed").inc()
        t.labels("ctx_pool", "completed").inc(2.5)
        t.labels(mode="passthrough", outcome="failed").inc(0)
        t.labels("passthrough", "failed").inc(3)
        p.inc()
        p.inc(7)
        s.inc()
        s.inc(4)
        s.dec()
        s.dec(0.25)
        st = state[ours_or_stock].labels("acct-a")
        st.set(1)
        st.set(True)
        st.inc(2)
        st.dec(5)
        state[ours_or_stock].labels("acct-b").set(0.5)
        child = latency[ours_or_stock].labels("ctx_pool")
        for value in AROUND_BOUNDS:
            child.observe(value)
            bare[ours_or_stock].observe(value)
        latency[ours_or_stock].labels("passthrough").observe(3)  # an int
    pair.assert_same()


def test_nan_is_summed_and_counted_in_no_bucket_as_in_stock() -> None:
    pair = Pair()
    hist = pair.make(HISTOGRAM, "h_seconds", "h", buckets=LATENCY_BUCKETS)
    for h in hist:
        h.observe(math.nan)
        h.observe(0.001)
    pair.assert_same()
    assert pair.ours.get_sample_value("h_seconds_count") == 1


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.sampled_from(AROUND_BOUNDS),
            st.floats(min_value=-1.0, max_value=60.0),
            st.floats(allow_nan=False),
        ),
        max_size=40,
    ),
    st.lists(st.floats(min_value=0.0, max_value=1e6), max_size=20),
)
def test_random_observations_and_increments_match_stock(
    observations: list[float], increments: list[float]
) -> None:
    pair = Pair()
    hists = pair.make(HISTOGRAM, "h_seconds", "h", ["mode"], buckets=LATENCY_BUCKETS)
    counters = pair.make(COUNTER, "c", "c", ["mode"])
    for h, c in zip(hists, counters, strict=True):
        for value in observations:
            h.labels("ctx_pool").observe(value)
        for amount in increments:
            c.labels("ctx_pool").inc(amount)
    pair.assert_same()


def test_a_negative_increment_raises_and_changes_nothing() -> None:
    registry = CollectorRegistry()
    labelled = CachedCounter("c", "c", ["mode"], registry=registry)
    plain = CachedCounter("p", "p", registry=registry)
    labelled.labels("x").inc(2)
    for counter in (labelled.labels("x"), plain):
        with pytest.raises(ValueError, match="non-negative"):
            counter.inc(-1)
    assert registry.get_sample_value("c_total", {"mode": "x"}) == 2
    assert registry.get_sample_value("p_total") == 0


def test_exemplars_are_recorded_as_stock_records_them() -> None:
    pair = Pair()
    counters = pair.make(COUNTER, "c", "c", ["mode"])
    hists = pair.make(HISTOGRAM, "h_seconds", "h", ["mode"], buckets=LATENCY_BUCKETS)
    for c, h in zip(counters, hists, strict=True):
        c.labels("x").inc(2, {"trace_id": "abc"})
        c.labels("x").inc(1)  # no exemplar: the last one stays
        h.labels("x").observe(0.0005, {"trace_id": "def"})
        h.labels("x").observe(0.0004)
    pair.assert_same()
    assert ("c_total", {"mode": "x"}, "3.0", ({"trace_id": "abc"}, 2)) in _samples(pair.ours)


def test_a_sampled_series_records_exemplars_as_stock_does(monkeypatch: pytest.MonkeyPatch) -> None:
    draws = iter([0.0, 0.9, 0.0])  # keep, drop, keep
    monkeypatch.setattr(SampledHistogram, "draw", staticmethod(lambda: next(draws)))
    pair = Pair()
    ours, stock = pair.make((SampledHistogram, Histogram), "h_seconds", "h", ["mode"])
    for value, trace in ((0.3, "kept"), (0.4, "dropped"), (2.0, "kept too")):
        ours.labels("x").observe(value, {"trace_id": trace})
    stock.labels("x").observe(0.3, {"trace_id": "kept"})
    stock.labels("x").observe(2.0, {"trace_id": "kept too"})
    pair.assert_same()


def test_updates_on_a_labelled_parent_raise_as_in_stock() -> None:
    pair = Pair()
    counters = pair.make(COUNTER, "c", "c", ["mode"])
    gauges = pair.make(GAUGE, "g", "g", ["mode"])
    hists = pair.make(HISTOGRAM, "h_seconds", "h", ["mode"])
    calls: list[Callable[[Any, Any, Any], object]] = [
        lambda c, g, h: c.inc(),
        lambda c, g, h: g.set(1),
        lambda c, g, h: g.inc(),
        lambda c, g, h: g.dec(),
        lambda c, g, h: h.observe(1.0),
    ]
    for call in calls:
        messages = []
        for c, g, h in zip(counters, gauges, hists, strict=True):
            with pytest.raises(ValueError) as raised:
                call(c, g, h)
            messages.append(str(raised.value))
        assert messages[0] == messages[1]


def test_most_recent_gauges_keep_the_library_rules() -> None:
    gauge = CachedGauge("g", "g", registry=CollectorRegistry(), multiprocess_mode="mostrecent")
    gauge.set(4)
    with pytest.raises(RuntimeError):
        gauge.inc()


class NoLock:
    def __enter__(self) -> None:
        raise AssertionError("took the lock")

    def __exit__(self, *exc: object) -> None:
        pass


def test_single_process_updates_take_no_lock() -> None:
    registry = CollectorRegistry()
    counter = CachedCounter("c", "c", ["mode"], registry=registry).labels("x")
    gauge = CachedGauge("g", "g", ["mode"], registry=registry).labels("x")
    hist = CachedHistogram("h_seconds", "h", ["mode"], registry=registry).labels("x")
    values = [counter._value, gauge._value, hist._sum, *hist._buckets]
    locks = [v._lock for v in values]
    for v in values:
        v._lock = NoLock()
    counter.inc()
    gauge.set(2)
    gauge.inc()
    gauge.dec(0.5)
    hist.observe(0.3)
    for v, lock in zip(values, locks, strict=True):
        v._lock = lock
    assert registry.get_sample_value("c_total", {"mode": "x"}) == 1
    assert registry.get_sample_value("g", {"mode": "x"}) == 2.5
    assert registry.get_sample_value("h_seconds_bucket", {"mode": "x", "le": "0.5"}) == 1


# Multiprocess mode: each worker writes mmap files; the scrape sums them.


@pytest.fixture
def workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], Metrics]]:
    """Builds Metrics as if in separate workers (distinct ids) sharing one directory."""
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path))
    made: list[Any] = []

    def worker() -> Metrics:
        ident = len(made) + 1
        value_class = values.MultiProcessValue(lambda: ident)  # type: ignore[no-untyped-call]
        made.append(value_class)
        monkeypatch.setattr(values, "ValueClass", value_class)
        return Metrics(accounts=["acct-a"])

    yield worker
    for value_class in made:
        value_class.close_all_files()


def test_multiprocess_workers_still_sum(workers: Callable[[], Metrics]) -> None:
    first, second = workers(), workers()
    for metrics, turns in ((first, 2), (second, 3)):
        for _ in range(turns):
            metrics.turns.labels("ctx_pool", "completed").inc()
            metrics.ttft.labels("ctx_pool").observe(0.001)  # exactly on a bound
            metrics.sessions.inc()
        metrics.retry_exhausted.inc(0.5)
        metrics.sessions.dec()
        metrics.pool_size.labels("acct-a", "idle").set(4)
    second.ttft.labels("ctx_pool").observe(40.0)
    scraped = _parse(first.render())
    mode = (("mode", "ctx_pool"),)
    assert scraped["gateway_turns_total", (*mode, ("outcome", "completed"))] == 5
    assert scraped["gateway_ttft_seconds_bucket", (("le", "0.00075"), *mode)] == 0
    assert scraped["gateway_ttft_seconds_bucket", (("le", "0.001"), *mode)] == 5
    assert scraped["gateway_ttft_seconds_bucket", (("le", "30.0"), *mode)] == 5
    assert scraped["gateway_ttft_seconds_bucket", (("le", "+Inf"), *mode)] == 6
    assert scraped["gateway_ttft_seconds_count", mode] == 6
    assert scraped["gateway_ttft_seconds_sum", mode] == pytest.approx(40.005)
    assert scraped["gateway_retry_exhausted_total", ()] == 1
    assert scraped["gateway_client_sockets", ()] == 3  # livesum: (2 - 1) + (3 - 1)
    assert scraped["gateway_pool_connections", (("account", "acct-a"), ("state", "idle"))] == 8


def _parse(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }
