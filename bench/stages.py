"""Per-stage timing of ctx_pool turns inside the in-process host (bench/inproc.py).

Wraps, in this process only, the functions one turn passes through with a timer that
adds to the turn's record (a context variable set by the turn's entry, so concurrent
turns do not mix): decode → lookup → pick (account and transport) → acquire →
stop_watch → normalize (which includes encode, its last step; none when the request goes
out as the client's bytes) → upstream write → note (metrics, payload sample, once the
request is out), then relay (first byte → terminal) → watch_idle → release (the socket
goes back at the terminal) → bind.
``pre_write`` is the turn's entry to the end of the upstream write: the in-process cost
before the request leaves. Figures are wall time on one socket (no other turn runs in
between); each wrapper reads the clock twice, and ``clock_read_ns`` (measured at start)
says what one read costs on this machine, included in the figures.
"""

from __future__ import annotations

import functools
import importlib
import re
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
    "upstream_write",
    "note",
    "pre_write",
    "pre_write_cpu",
    "pre_issue",
    "frame_to_issue",
    "frame_to_write",
    "frame_to_first_out",
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

_CONTINUES = re.compile(r'"previous_response_id"\s*:\s*"')
_CREATES = re.compile(r'"type"\s*:\s*"response\.create"')
_INHERITED = object()  # the attribute came from a base class
_record: ContextVar[dict[str, Any] | None] = ContextVar("bench_stage_record", default=None)


class StageProbe:
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.recording = False
        self.clock_read_ns = 0.0
        self._saved: list[tuple[Any, str, Any]] = []  # (owner, attribute, original)

    def start(self, bare: bool = False, frame_only: bool = False) -> dict[str, Any]:
        """``bare``: time only the turn's entry and its upstream write (``pre_write``,
        ``turn``), so no other stage's timer adds to the figure. ``frame_only``: just the
        client frame's arrival → the upstream write, for any relay in this process (the
        floor too: it needs none of the gateway's functions)."""
        self._restore()
        self._install_frame_in(frame_only)
        if not frame_only:
            self._install(bare)
        self.records.clear()
        self.recording = True
        started = _now()
        for _ in range(1000):
            _now()
        self.clock_read_ns = (_now() - started) / 1000
        return {"ok": True}

    def stop(self) -> dict[str, Any]:
        self.recording = False
        self._restore()
        out: dict[str, Any] = {"ok": True, "clock_read_ns": self.clock_read_ns}
        for label, keep in (
            ("continuation", lambda r: r.get("continuation")),
            ("all", lambda r: True),
        ):
            chosen = [r for r in self.records if keep(r)]
            out[label] = {"turns": len(chosen), "p50_us": _medians(chosen)}
        return out

    def _patch(self, owner: Any, name: str, value: Any) -> None:
        """Replace ``owner.name`` until ``_restore`` (an inherited one is removed then)."""
        self._saved.append((owner, name, vars(owner).get(name, _INHERITED)))
        setattr(owner, name, value)

    def _restore(self) -> None:
        while self._saved:
            owner, name, original = self._saved.pop()
            if original is _INHERITED:
                delattr(owner, name)
            else:
                setattr(owner, name, original)

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
        self, fn: Callable[..., Any], stage: str | None, writes: bool = False
    ) -> Callable[..., Any]:
        """``writes``: ``fn`` is the upstream write; its first call in a turn stops the
        clocks started at the turn's entry and at the frame's arrival."""

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
                if stage is not None:
                    rec[stage] = rec.get(stage, 0) + now - started
                if writes and "_written" not in rec:
                    _written(rec, started, now)

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

    def _install_frame_in(self, frame_only: bool) -> None:
        """The clock starts when the ASGI app is handed a ``response.create`` frame
        (Starlette's ``WebSocket.receive`` returns it) and stops at the end of the first
        upstream write after it: the gateway's ``UpstreamWS.send_text`` or, in the floor,
        the ``websockets`` client's ``send``. ``frame_to_issue`` stops when that write
        is called, before the socket's send system call."""
        from starlette.websockets import WebSocket
        from websockets.asyncio.connection import Connection

        probe = self
        receive = WebSocket.receive

        @functools.wraps(receive)
        async def timed_receive(self: Any) -> Any:
            message = await receive(self)
            if probe.recording:
                frame = message.get("text") or message.get("bytes") or ""
                text = frame if isinstance(frame, str) else bytes(frame).decode(errors="replace")
                if _CREATES.search(text) is not None:
                    rec = {"continuation": _CONTINUES.search(text) is not None, "_frame_in": _now()}
                    _record.set(rec)  # a turn task created from here inherits it
                    probe.records.append(rec)
            return message

        self._patch(WebSocket, "receive", timed_receive)
        self._patch(Connection, "send", self._async(Connection.send, None, writes=True))
        if frame_only:  # the gateway's write, in either mode (else _install times it)
            from gateway.upstream.connection import UpstreamWS

            self._patch(UpstreamWS, "send_text", self._async(UpstreamWS.send_text, None, True))
        self._install_first_out()

    def _install_first_out(self) -> None:
        """The first event the gateway writes to the client after the upstream write:
        ``frame_to_first_out`` is the turn's time to first token inside the gateway
        (frame in → request out → the upstream's answer → first event out)."""
        from gateway.session import ClientSink

        send_nowait = ClientSink.send_nowait

        @functools.wraps(send_nowait)
        def timed_send_nowait(self: Any, frame: Any) -> Any:
            rec = _record.get()
            if rec is not None and "_written" in rec and "frame_to_first_out" not in rec:
                rec["frame_to_first_out"] = _now() - rec.get("_frame_in", rec.get("_entry", 0))
            return send_nowait(self, frame)

        self._patch(ClientSink, "send_nowait", timed_send_nowait)

    def _install(self, bare: bool) -> None:
        """Long because it lists every function one turn passes through, each with its
        stage, in the order the turn meets them."""
        import prometheus_client.metrics as prom

        from gateway import accounts, context, telemetry, tracing
        from gateway.forward import attempt, ctx_pool
        from gateway.upstream import connection
        from pool import lease, pool

        normalize_module = importlib.import_module("normalizer.normalize")
        probe = self
        patch = self._patch
        fwd = ctx_pool.CtxPoolForwarder
        conn = connection.UpstreamWS
        run_turn = fwd.run_turn

        @functools.wraps(run_turn)
        async def timed_turn(self: Any, frame: str, sink: Any) -> None:
            if not probe.recording:
                await run_turn(self, frame, sink)
                return
            # the record made when the frame came in; else (no receive seen) a new one
            rec = _record.get()
            made = rec is None or "_entry" in rec
            if made:
                # a continuation names its previous response (read before the clock starts)
                rec = {"continuation": _CONTINUES.search(frame) is not None}
            token = _record.set(rec)
            if bare:  # this thread's CPU time too (a read costs ~1 µs: bare runs only)
                rec["_cpu_entry"] = time.thread_time_ns()
            rec["_entry"] = _now()
            try:
                await run_turn(self, frame, sink)
            finally:
                rec["turn"] = _now() - rec["_entry"]
                _record.reset(token)
                if made:
                    probe.records.append(rec)

        patch(fwd, "run_turn", timed_turn)
        patch(conn, "send_text", self._async(conn.send_text, "upstream_write", writes=True))
        if bare:
            return
        patch(ctx_pool, "decode_request", self._sync(ctx_pool.decode_request, "decode"))
        patch(
            ctx_pool, "resolve_continuation", self._async(ctx_pool.resolve_continuation, "lookup")
        )
        local = getattr(ctx_pool, "local_continuation", None)  # absent from older trees
        if local is not None:
            patch(ctx_pool, "local_continuation", self._sync(local, "lookup"))
        # normalize encodes the upstream payload once, at its end (``settle``)
        patch(attempt, "normalize", self._sync(attempt.normalize, "normalize"))
        patch(
            normalize_module,
            "encode_request",
            self._sync(normalize_module.encode_request, "encode"),
        )
        patch(accounts.Scheduler, "pick", self._sync(accounts.Scheduler.pick, "pick"))
        gw = context.GatewayContext
        patch(gw, "resolution", self._sync(gw.resolution, "pick"))
        run = attempt.WsAttempt
        patch(run, "_note", self._sync(run._note, "note"))
        patch(run, "_relay", self._async(run._relay, "relay"))
        patch(fwd, "_finish", self._sync(fwd._finish, "bind"))
        patch(pool.AccountPool, "acquire", self._async(pool.AccountPool.acquire, "acquire"))
        ready = getattr(pool.AccountPool, "acquire_ready", None)  # absent from older trees
        if ready is not None:
            patch(pool.AccountPool, "acquire_ready", self._sync(ready, "acquire"))
        patch(lease.Lease, "release", self._sync(lease.Lease.release, "release"))
        patch(conn, "stop_watch", self._sync(conn.stop_watch, "stop_watch"))
        patch(conn, "watch_idle", self._sync(conn.watch_idle, "watch_idle"))
        tracer = tracing.Tracing
        patch(tracer, "child", self._timed_spans(tracer.child))
        patch(tracer, "turn_span", self._timed_spans(tracer.turn_span))
        # Every labels() call, whether prometheus-client answers it or the gateway's cache;
        # the gateway's lock-free updates are per-series closures no class patch reaches.
        base = prom.MetricWrapperBase
        patch(base, "labels", self._counted(base.labels, "metrics"))
        patch(prom.Counter, "inc", self._counted(prom.Counter.inc, "metrics"))
        patch(prom.Histogram, "observe", self._counted(prom.Histogram.observe, "metrics"))
        # getattr: the same probe also times older trees (before/after comparisons)
        cached = getattr(telemetry, "_LabelCache", None)
        if cached is not None:
            patch(cached, "labels", self._counted(cached.labels, "metrics"))
        sampled = getattr(telemetry, "SampledHistogram", None)
        if sampled is not None:
            patch(sampled, "observe", self._counted(sampled.observe, "metrics"))


def _written(rec: dict[str, Any], started: int, now: int) -> None:
    rec["_written"] = True
    if "_entry" in rec:
        rec["pre_issue"] = started - rec["_entry"]
        rec["pre_write"] = now - rec["_entry"]
        if "_cpu_entry" in rec:
            rec["pre_write_cpu"] = time.thread_time_ns() - rec["_cpu_entry"]
    if "_frame_in" in rec:
        rec["frame_to_issue"] = started - rec["_frame_in"]
        rec["frame_to_write"] = now - rec["_frame_in"]


def _medians(records: list[dict[str, Any]]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for stage in STAGES:
        values = sorted(r[stage] for r in records if stage in r)
        out[stage] = values[len(values) // 2] / 1000 if values else None
    return out
