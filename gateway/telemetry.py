"""Prometheus metrics: turns, latency, retries, fallbacks, pool, state store.

Each app owns its registry, so several apps can live in one test process. Every label
set the gateway knows in advance exists at zero from the start, so ``rate()`` and
``absent()`` alerts have series to work on before the first failure. Under
``--workers N`` the workers write to a shared directory (prometheus-client multiprocess
mode, ``PROMETHEUS_MULTIPROC_DIR``) and any worker's ``/metrics`` shows the sum.
"""

from __future__ import annotations

import os
import platform
import random
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from importlib import metadata
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.values import MutexValue

from gateway.accounts import AccountState
from gateway.forward.facts import Outcome
from gateway.recovery import Failure
from normalizer import InvariantState, Reason

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Fine low buckets so P95/P99 below 1 ms are readable.
LATENCY_BUCKETS = (
    *(0.00005, 0.0001, 0.00025, 0.0005, 0.00075),
    *(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5),
    *(1.0, 2.5, 5.0, 10.0, 30.0),
)

# Label values known before any traffic; each becomes a zero series at startup.
ACCOUNT_STATES = tuple(state.value for state in AccountState)
FAILOVER_REASONS = ("rate_limited", "handshake_429", "account_refused", "account_open")
TURN_OUTCOMES = (
    *(o.value for o in Outcome),
    "upstream_lost",  # passthrough: the upstream socket closed mid-turn
    "upstream_failed",  # passthrough: the upstream could not be dialled for the turn
)
HANDSHAKE_RESULTS = (
    "accepted",
    "unauthorized",
    "draining",
    "upgrade_required",
    "no_account",
    "upstream_failed",
)
# Why a WebSocket turn went over HTTP: resolver decisions and policy failures.
FALLBACK_REASONS = (
    "fallback_cooldown",
    "account_force_http",
    "account_disabled",
    "mode_off",
    "unknown_auth_type",
    *(f.value for f in Failure),
)
RETRY_REASONS = tuple(f.value for f in Failure)
STORE_OPS = (
    "bind",
    "forget",
    "lookup",
    "ping",
    "load_transcript",
    "cooldown_publish",
    "cooldown_read",
)
POOL_STATES = ("idle", "leased")


# One relayed event in this many lands in the added-latency histogram: observing every
# event cost more than a microsecond per event (a lock per bucket and sum update).
ADDED_LATENCY_SAMPLE_EVERY = 8


class _LabelCache(MetricWrapperBase):
    """``labels()`` answered from a dict once a label set has been seen.

    prometheus-client validates, stringifies and takes a lock on every ``labels()`` call
    (several µs each, a dozen per turn); the hot path asks for the same few label sets
    over and over, so each child is resolved once. Series are never removed, so a
    cached child stays the registered one.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._children_by_values: dict[tuple[Any, ...], Any] = {}

    def labels(self, *labelvalues: Any, **labelkwargs: Any) -> Any:
        try:
            if not labelkwargs:
                return self._children_by_values[labelvalues]
        except KeyError:
            pass
        return self._resolve(labelvalues, labelkwargs)

    def _resolve(self, labelvalues: tuple[Any, ...], labelkwargs: dict[str, Any]) -> Any:
        child = super().labels(*labelvalues, **labelkwargs)
        if not labelkwargs:
            self._children_by_values[labelvalues] = child
        return child


# Lock-free updates in single-process mode: every update runs on the event loop thread and
# a scrape reads one Python float (whole under the GIL), so MutexValue's lock only costs
# time. Each series decides once, when created: over a MutexValue its update methods become
# closures in the instance dict (one Python call each); mmap values keep the library's.


class CachedCounter(_LabelCache, Counter):
    def _metric_init(self) -> None:
        super()._metric_init()
        value = self._value
        if type(value) is not MutexValue:
            return

        def inc(amount: float = 1, exemplar: dict[str, str] | None = None) -> None:
            if amount < 0 or exemplar:  # the library's ValueError, or its exemplar path
                Counter.inc(self, amount, exemplar)
            else:
                value._value += amount

        vars(self)["inc"] = inc


class CachedGauge(_LabelCache, Gauge):
    def _metric_init(self) -> None:
        super()._metric_init()
        value = self._value
        # The most-recent modes refuse inc/dec and timestamp a set: the library path.
        if type(value) is not MutexValue or "mostrecent" in self._multiprocess_mode:
            return

        def inc(amount: float = 1) -> None:
            value._value += amount

        def dec(amount: float = 1) -> None:
            value._value -= amount

        def set_to(amount: float) -> None:
            value._value = float(amount)

        vars(self).update(inc=inc, dec=dec, set=set_to)


class CachedHistogram(_LabelCache, Histogram):
    def _metric_init(self) -> None:
        super()._metric_init()
        if type(self._sum) is MutexValue:
            vars(self)["observe"] = self._lock_free_observe()

    def _lock_free_observe(self) -> Callable[..., None]:
        total, bounds, buckets = self._sum, tuple(self._upper_bounds), tuple(self._buckets)

        def observe(amount: float, exemplar: dict[str, str] | None = None) -> None:
            if exemplar:
                Histogram.observe(self, amount, exemplar)
                return
            total._value += amount
            # The first bound >= amount (``le``); the last bound is +Inf. Only NaN fails
            # the check, and the library counts NaN in no bucket either.
            i = bisect_left(bounds, amount)
            if amount <= bounds[i]:
                buckets[i]._value += 1

        return observe


class SampledHistogram(CachedHistogram):
    """A histogram that records a random sample of what it is given: one value in
    ``every`` on average, chosen by coin flip (not by position, so a turn's event order
    cannot bias which events are seen). Quantiles stay unbiased; ``_count`` and ``_sum``
    cover the sample only."""

    every = ADDED_LATENCY_SAMPLE_EVERY
    # Uniform in [0, 1); replaceable in tests. A lock-free series reads ``every`` and
    # ``draw`` once, when it is created (a class lookup per event cost 30 ns).
    draw = staticmethod(random.random)

    def observe(self, amount: float, exemplar: dict[str, str] | None = None) -> None:
        if self.every <= 1 or self.draw() * self.every < 1.0:
            super().observe(amount, exemplar)

    def _lock_free_observe(self) -> Callable[..., None]:
        record, every, draw = super()._lock_free_observe(), self.every, self.draw
        if every <= 1:
            return record

        def observe(amount: float, exemplar: dict[str, str] | None = None) -> None:
            if draw() * every < 1.0:
                record(amount, exemplar)

        return observe


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def gateway_version() -> str:
    try:
        return metadata.version("responses-ws-gateway")
    except metadata.PackageNotFoundError:
        return "0+unknown"


class Metrics:
    def __init__(
        self, accounts: Sequence[str] = (), modes: Iterable[str] = ("ctx_pool", "passthrough")
    ) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self._multiproc = multiprocess_dir()
        if self._multiproc is None:
            # Process and platform facts of this process (a custom registry has none).
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
        self._declare_turn_metrics(r)
        self._declare_socket_metrics(r)
        self._declare_store_metrics(r)
        self.build_info = CachedGauge(
            "gateway_build_info",
            "Always 1; the labels name the running build",
            ["version", "python"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.build_info.labels(gateway_version(), platform.python_version()).set(1)
        self._precreate(list(accounts), list(modes))

    def _declare_turn_metrics(self, r: CollectorRegistry) -> None:
        """How turns went: outcomes, latency, retries, fallbacks, recoveries."""
        self.turns = CachedCounter(
            "gateway_turns", "Turns by outcome", ["mode", "outcome"], registry=r
        )
        self.ttft = CachedHistogram(
            "gateway_ttft_seconds",
            "Time to first upstream event",
            ["mode"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.added_latency = SampledHistogram(
            "gateway_added_latency_seconds",
            "Gateway time per relayed event (upstream read to client write), from a random"
            f" sample of 1 in {ADDED_LATENCY_SAMPLE_EVERY} events: quantiles hold, _count is"
            " the sample's size (gateway_relayed_events counts every event)",
            ["mode"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.events = CachedCounter(
            "gateway_relayed_events", "Upstream events relayed to clients", ["mode"], registry=r
        )
        self.retry_attempts = CachedCounter(
            "gateway_retry_attempts",
            "WebSocket retry attempts (beyond the first)",
            ["reason"],
            registry=r,
        )
        self.retry_exhausted = CachedCounter(
            "gateway_retry_exhausted", "Turns whose retries ran out", registry=r
        )
        self.fallbacks = CachedCounter(
            "gateway_http_fallbacks",
            "WebSocket turns the gateway served over HTTP instead",
            ["reason"],
            registry=r,
        )
        self.http_requests = CachedCounter(
            "gateway_http_requests",
            "Requests clients sent over HTTP POST /v1/responses (not a fallback)",
            registry=r,
        )
        self.recoveries = CachedCounter(
            "gateway_recoveries", "Recoveries by reason", ["reason", "result"], registry=r
        )
        self.normalizer = CachedCounter(
            "gateway_normalizer_decisions", "Normalizer decisions", ["state", "reason"], registry=r
        )
        self.drained = CachedCounter(
            "gateway_drained_turns", "Turns drained to terminal after the client left", registry=r
        )

    def _declare_socket_metrics(self, r: CollectorRegistry) -> None:
        """Client sockets, upstream accounts and the upstream socket pools."""
        self.client_errors = CachedCounter(
            "gateway_client_errors",
            "Error events the gateway sent to clients",
            ["code"],
            registry=r,
        )
        self.handshakes = CachedCounter(
            "gateway_handshakes", "Client WebSocket handshakes", ["result"], registry=r
        )
        self.sessions = CachedGauge(
            "gateway_client_sockets",
            "Open client WebSockets",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.account_state = CachedGauge(
            "gateway_account_state",
            "1 for the state each upstream account is in (healthy, cooling, open, half_open)",
            ["account", "state"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.failovers = CachedCounter(
            "gateway_account_failovers",
            "Turns moved to another account before any event reached the client",
            ["reason"],
            registry=r,
        )
        self.sockets_holding_response = CachedGauge(
            "gateway_upstream_sockets_holding_response",
            "Upstream sockets known to hold a previous response in their connection cache",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.pool_size = CachedGauge(
            "gateway_pool_connections",
            "Upstream sockets per account by state (idle + leased = all; sum() is safe)",
            ["account", "state"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.pool_reuse = CachedGauge(
            "gateway_pool_reuse_ratio",
            "Reused / all acquires per account (the highest worker's under --workers)",
            ["account"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.pool_acquires = CachedCounter(
            "gateway_pool_acquires", "Upstream socket leases", ["account", "kind"], registry=r
        )

    def _declare_store_metrics(self, r: CollectorRegistry) -> None:
        """The continuation state store and its hot cache."""
        self.store_ops = CachedHistogram(
            "gateway_statestore_op_seconds",
            "State store op latency",
            ["op"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.store_errors = CachedCounter(
            "gateway_statestore_errors", "State store op failures", ["op"], registry=r
        )
        self.store_cache = CachedCounter(
            "gateway_statestore_cache", "Hot cache lookups", ["result"], registry=r
        )
        self.bind_failures = CachedCounter(
            "gateway_statestore_bind_failures", "Turn binds that did not reach Redis", registry=r
        )

    def _precreate(self, accounts: list[str], modes: list[str]) -> None:
        for mode in modes:
            self.ttft.labels(mode)
            self.added_latency.labels(mode)
            self.events.labels(mode)
            for outcome in TURN_OUTCOMES:
                self.turns.labels(mode, outcome)
        for result in HANDSHAKE_RESULTS:
            self.handshakes.labels(result)
        for reason in FALLBACK_REASONS:
            self.fallbacks.labels(reason)
        for reason in RETRY_REASONS:
            self.retry_attempts.labels(reason)
        for op in STORE_OPS:
            self.store_ops.labels(op)
            self.store_errors.labels(op)
        for result in ("hit", "miss"):
            self.store_cache.labels(result)
        for invariant in InvariantState:
            for why in Reason:
                self.normalizer.labels(invariant.value, why.value)
        for reason in FAILOVER_REASONS:
            self.failovers.labels(reason)
        for account in accounts:
            for state in ACCOUNT_STATES:
                self.account_state.labels(account, state).set(1 if state == "healthy" else 0)
            for state in POOL_STATES:
                self.pool_size.labels(account, state).set(0)
            self.pool_reuse.labels(account).set(0)
            for kind in ("reused", "dialed"):
                self.pool_acquires.labels(account, kind)

    def render(self) -> bytes:
        return self.render_exposition(None)[0]

    def render_exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The scrape body: this registry, or every worker's files in multiprocess mode."""
        if self._multiproc is None:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=self._multiproc)  # type: ignore[no-untyped-call]
        # Process facts are per process: these are the answering worker's.
        registry.register(PROCESS_COLLECTOR)
        registry.register(PLATFORM_COLLECTOR)
        return generate_latest(registry), CONTENT_TYPE_LATEST

    def close(self) -> None:
        """A worker leaving: its live gauges stop counting towards the sum."""
        if self._multiproc is not None:
            multiprocess.mark_process_dead(os.getpid(), self._multiproc)  # type: ignore[no-untyped-call]


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
