"""Prometheus metrics for the release gates (R-24).

Each app owns its registry, so several apps can live in one test process. Hot-path
updates are plain counter/histogram calls on pre-bound label children.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Fine low buckets so P95/P99 below 1 ms are readable.
LATENCY_BUCKETS = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.00075,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.turns = Counter("gateway_turns", "Turns by outcome", ["mode", "outcome"], registry=r)
        self.ttft = Histogram(
            "gateway_ttft_seconds",
            "Time to first upstream event",
            ["mode"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.added_latency = Histogram(
            "gateway_added_latency_seconds",
            "Gateway time per relayed event (upstream read to client write)",
            ["mode"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.events = Counter(
            "gateway_relayed_events", "Upstream events relayed to clients", ["mode"], registry=r
        )
        self.retry_attempts = Counter(
            "gateway_retry_attempts",
            "WebSocket retry attempts (beyond the first)",
            ["reason"],
            registry=r,
        )
        self.retry_exhausted = Counter(
            "gateway_retry_exhausted", "Turns whose retries ran out", registry=r
        )
        self.fallbacks = Counter(
            "gateway_http_fallbacks",
            "Turns served over HTTP instead of WebSocket",
            ["reason"],
            registry=r,
        )
        self.recoveries = Counter(
            "gateway_recoveries", "Recoveries by reason", ["reason", "result"], registry=r
        )
        self.normalizer = Counter(
            "gateway_normalizer_decisions", "Normalizer decisions", ["state", "reason"], registry=r
        )
        self.drained = Counter(
            "gateway_drained_turns", "Turns drained to terminal after the client left", registry=r
        )
        self.client_errors = Counter(
            "gateway_client_errors",
            "Error events the gateway sent to clients",
            ["code"],
            registry=r,
        )
        self.handshakes = Counter(
            "gateway_handshakes", "Client WebSocket handshakes", ["result"], registry=r
        )
        self.sessions = Gauge("gateway_client_sockets", "Open client WebSockets", registry=r)
        self.account_state = Gauge(
            "gateway_account_state",
            "1 for the state each upstream account is in (healthy, cooling, open, half_open)",
            ["account", "state"],
            registry=r,
        )
        self.failovers = Counter(
            "gateway_account_failovers",
            "Turns moved to another account before any event reached the client",
            ["reason"],
            registry=r,
        )
        self.sockets_holding_response = Gauge(
            "gateway_upstream_sockets_holding_response",
            "Upstream sockets known to hold a previous response in their connection cache",
            registry=r,
        )
        self.pool_size = Gauge(
            "gateway_pool_connections",
            "Upstream sockets per account",
            ["account", "state"],
            registry=r,
        )
        self.pool_reuse = Gauge(
            "gateway_pool_reuse_ratio", "Reused / all acquires per account", ["account"], registry=r
        )
        self.pool_acquires = Counter(
            "gateway_pool_acquires", "Upstream socket leases", ["account", "kind"], registry=r
        )
        self.store_ops = Histogram(
            "gateway_statestore_op_seconds",
            "State store op latency",
            ["op"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.store_errors = Counter(
            "gateway_statestore_errors", "State store op failures", ["op"], registry=r
        )
        self.store_cache = Counter(
            "gateway_statestore_cache", "Hot cache lookups", ["result"], registry=r
        )
        self.bind_failures = Counter(
            "gateway_statestore_bind_failures", "Turn binds that did not reach Redis", registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


class StoreMetricsHooks:
    """statestore.StoreHooks implementation feeding Metrics (the package can't import us)."""

    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics

    def on_op(self, op: str, seconds: float, ok: bool) -> None:
        self._m.store_ops.labels(op).observe(seconds)
        if not ok:
            self._m.store_errors.labels(op).inc()

    def on_cache(self, hit: bool) -> None:
        self._m.store_cache.labels("hit" if hit else "miss").inc()

    def on_bind_failure(self, group: str, account_id: str, response_id: str, error: str) -> None:
        self._m.bind_failures.inc()
