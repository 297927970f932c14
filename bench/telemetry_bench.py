"""Per-event and per-turn cost of the relay path's telemetry.

    .venv/bin/python -m bench.telemetry_bench

Per event: the added-latency observation (sampled 1 in N) against a plain histogram
observation and the OpenTelemetry metrics API. Per turn: ``labels()`` answered by the
gateway's cache against prometheus-client's own, and a span with tracing off.
"""

from __future__ import annotations

import time
import timeit
from collections.abc import Callable

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry, Counter, Histogram

from gateway.config import TelemetryConfig
from gateway.telemetry import LATENCY_BUCKETS, Metrics
from gateway.tracing import Tracing

N = 200_000


def ns(fn: Callable[[], object]) -> float:
    return min(timeit.repeat(fn, number=N, repeat=3)) / N * 1e9


def main() -> None:
    metrics = Metrics()
    sampled = metrics.added_latency.labels("ctx_pool")
    plain = Histogram("h", "h", ["mode"], buckets=LATENCY_BUCKETS, registry=CollectorRegistry())
    plain_child = plain.labels("ctx_pool")
    stock = Counter("c", "c", ["mode", "outcome"], registry=CollectorRegistry())
    provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    hist = provider.get_meter("bench").create_histogram("added_latency")
    attrs = {"mode": "ctx_pool"}
    tracing = Tracing(TelemetryConfig(), "bench", env={})

    def span() -> None:
        with tracing.child("upstream.write", **{"gateway.bytes": 1}):
            pass

    rows = [
        ("per event: added latency observe, sampled (gateway)", ns(lambda: sampled.observe(3e-4))),
        ("per event: histogram observe, every event", ns(lambda: plain_child.observe(3e-4))),
        ("per event: OpenTelemetry histogram record", ns(lambda: hist.record(3e-4, attrs))),
        ("per event: time.perf_counter (2 per event)", ns(time.perf_counter)),
        (
            "per turn: labels() from the gateway's cache",
            ns(lambda: metrics.turns.labels("ctx_pool", "completed")),
        ),
        (
            "per turn: labels() in prometheus-client",
            ns(lambda: stock.labels("ctx_pool", "completed")),
        ),
        ("per turn: one child span, tracing off", ns(span)),
    ]
    for label, value in rows:
        print(f"{label:55} {value:7.0f} ns")


if __name__ == "__main__":
    main()
