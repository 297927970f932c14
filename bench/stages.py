"""Per-stage timing of ctx_pool turns inside the in-process host (bench/inproc.py).

Wraps, in this process only, the functions one turn passes through with a timer that
adds to the turn's record (a context variable set by the turn's entry, so concurrent
turns do not mix): decode → lookup → pick (account and transport) → acquire →
stop_watch → normalize (which includes encode, its last step; none when the request goes
out as the client's bytes) → note (metrics, payload sample) → upstream write, then relay (first byte → terminal) → watch_idle
→ release (the socket goes back at the terminal) → bind.
``pre_write`` is the turn's entry to the end of the upstream write: the in-process cost
before the request leaves. Figures are wall time on one socket (no other turn runs in
between); each wrapper reads the clock twice, and ``clock_read_ns`` (measured at start)
says what one read costs on this machine, included in the figures.
"""

from __future__ import annotations

import functools
import importlib
import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

STAGES = (
    "decode",
    "lookup",
    "pick",
    "acquire",
    "stop_watch",
    "normalize",
    "encode",
    "note",
    "upstream_write",
    "pre_write",
    "relay",
    "watch_idle",
    "release",
    "bind",
    "turn",
    # not in the sequence above: totals over the whole turn, wherever they happen
    "spans",
    "spans_calls",
    "metrics",
    "metrics_calls",
)

# A wall clock: the thread CPU clock is a real system call in some VMs (µs per read),
# which would distort every stage; p50 keeps the odd preemption out of the figures.
_now = time.perf_counter_ns

_record: ContextVar[dict[str, Any] | None] = ContextVar("bench_stage_record", default=None)


class StageProbe:
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.recording = False
        self._installed = False
        self.clock_read_ns = 0.0

    def start(self) -> dict[str, Any]:
        if not self._installed:
            self._install()
            self._installed = True
        self.records.clear()
        self.recording = True
        started = _now()
        for _ in range(1000):
            _now()
        self.clock_read_ns = (_now() - started) / 1000
        return {"ok": True}

    def stop(self) -> dict[str, Any]:
        self.recording = False
        out: dict[str, Any] = {"ok": True, "clock_read_ns": self.clock_read_ns}
        for label, keep in (
            ("continuation", lambda r: r.get("continuation")),
            ("all", lambda r: True),
        ):
            chosen = [r for r in self.records if keep(r)]
            out[label] = {"turns": len(chosen), "p50_us": _medians(chosen)}
        return out

    # -- wrappers ----------------------------------------------------------------------
    def _sync(self, fn: Callable[..., Any], stage: str) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            rec = _record.get()
            if rec is None:
                return fn(*args, **kwargs)
            started = _now()
            try:
                return fn(*args, **kwargs)
            finally:
                rec[stage] = rec.get(stage, 0) + _now() - started

        return wrapper

    def _async(
        self, fn: Callable[..., Any], stage: str, mark: str | None = None
    ) -> Callable[..., Any]:
        @functools.wraps(fn)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            rec = _record.get()
            if rec is None:
                return await fn(*args, **kwargs)
            started = _now()
            try:
                return await fn(*args, **kwargs)
            finally:
                now = _now()
                rec[stage] = rec.get(stage, 0) + now - started
                if mark is not None:
                    rec[mark] = now - rec["_entry"]

        return wrapper

    def _counted(self, fn: Callable[..., Any], stage: str) -> Callable[..., Any]:
        """Like _sync, also counting the calls (``<stage>_calls``)."""
        calls = stage + "_calls"
        inside = "_in_" + stage

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            rec = _record.get()
            if rec is None or rec.get(inside):  # a wrapped call inside another: once
                return fn(*args, **kwargs)
            rec[inside] = True
            started = _now()
            try:
                return fn(*args, **kwargs)
            finally:
                rec[stage] = rec.get(stage, 0) + _now() - started
                rec[calls] = rec.get(calls, 0) + 1000  # medians divide by 1000
                rec[inside] = False

        return wrapper

    def _timed_spans(self, method: Callable[..., Any]) -> Callable[..., Any]:
        """A span context manager whose creation, enter and exit count as ``spans``."""
        probe = self

        class Timed:
            def __init__(self, inner: Any) -> None:
                self.inner = inner

            def __enter__(self) -> Any:
                enter = probe._counted(self.inner.__enter__, "spans")
                return enter()

            def __exit__(self, *exc: Any) -> Any:
                rec = _record.get()
                if rec is None:
                    return self.inner.__exit__(*exc)
                started = _now()
                try:
                    return self.inner.__exit__(*exc)
                finally:
                    rec["spans"] = rec.get("spans", 0) + _now() - started

        @functools.wraps(method)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return Timed(method(*args, **kwargs))

        return wrapper

    def _install(self) -> None:
        import prometheus_client.metrics as prom

        from gateway import accounts, context, telemetry, tracing
        from gateway.forward import attempt, ctx_pool
        from gateway.upstream import connection
        from pool import lease, pool

        normalize_module = importlib.import_module("normalizer.normalize")

        probe = self
        decode = ctx_pool.decode_request

        def decode_request(frame: str) -> Any:
            rec = _record.get()
            if rec is None:
                return decode(frame)
            started = _now()
            request = decode(frame)
            rec["decode"] = _now() - started
            rec["continuation"] = request.previous_response_id is not None
            return request

        ctx_pool.decode_request = decode_request  # type: ignore[assignment]
        lookup = ctx_pool.resolve_continuation
        ctx_pool.resolve_continuation = self._async(lookup, "lookup")  # type: ignore[assignment]
        # normalize encodes the upstream payload once, at its end (``settle``)
        attempt.normalize = self._sync(attempt.normalize, "normalize")  # type: ignore[assignment]
        normalize_module.encode_request = self._sync(  # type: ignore[assignment]
            normalize_module.encode_request, "encode"
        )
        accounts.Scheduler.pick = self._sync(accounts.Scheduler.pick, "pick")  # type: ignore[method-assign]
        gw = context.GatewayContext
        gw.resolution = self._sync(gw.resolution, "pick")  # type: ignore[method-assign]
        fwd = ctx_pool.CtxPoolForwarder
        run = attempt.WsAttempt
        run._note = self._sync(run._note, "note")  # type: ignore[method-assign]
        run._relay = self._async(run._relay, "relay")  # type: ignore[method-assign]
        fwd._finish = self._sync(fwd._finish, "bind")  # type: ignore[method-assign]
        pool.AccountPool.acquire = self._async(pool.AccountPool.acquire, "acquire")  # type: ignore[method-assign]
        lease.Lease.release = self._sync(lease.Lease.release, "release")  # type: ignore[method-assign]
        conn = connection.UpstreamWS
        conn.stop_watch = self._async(conn.stop_watch, "stop_watch")  # type: ignore[method-assign]
        conn.send_text = self._async(conn.send_text, "upstream_write", "pre_write")  # type: ignore[method-assign]
        conn.watch_idle = self._sync(conn.watch_idle, "watch_idle")  # type: ignore[method-assign]
        run_turn = fwd.run_turn

        @functools.wraps(run_turn)
        async def timed_turn(self: Any, frame: str, sink: Any) -> None:
            if not probe.recording:
                await run_turn(self, frame, sink)
                return
            rec: dict[str, Any] = {"_entry": _now()}
            token = _record.set(rec)
            try:
                await run_turn(self, frame, sink)
            finally:
                _record.reset(token)
                rec["turn"] = _now() - rec["_entry"]
                probe.records.append(rec)

        fwd.run_turn = timed_turn  # type: ignore[method-assign]
        tracer = tracing.Tracing
        tracer.child = self._timed_spans(tracer.child)  # type: ignore[method-assign]
        tracer.turn_span = self._timed_spans(tracer.turn_span)  # type: ignore[method-assign]
        # Every labels() call, whether prometheus-client answers it or the gateway's cache.
        base = prom.MetricWrapperBase
        base.labels = self._counted(base.labels, "metrics")  # type: ignore[method-assign]
        prom.Counter.inc = self._counted(prom.Counter.inc, "metrics")  # type: ignore[method-assign]
        prom.Histogram.observe = self._counted(prom.Histogram.observe, "metrics")  # type: ignore[method-assign]
        # getattr: the same probe also times older trees (before/after comparisons)
        cached = getattr(telemetry, "_LabelCache", None)
        if cached is not None:
            cached.labels = self._counted(cached.labels, "metrics")
        sampled = getattr(telemetry, "SampledHistogram", None)
        if sampled is not None:
            sampled.observe = self._counted(sampled.observe, "metrics")


def _medians(records: list[dict[str, Any]]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for stage in STAGES:
        values = sorted(r[stage] for r in records if stage in r)
        out[stage] = values[len(values) // 2] / 1000 if values else None
    return out
