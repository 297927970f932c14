"""Passthrough mode: one upstream socket per client socket, frames relayed verbatim.

The upstream socket is leased from the account's pool for the client socket's whole
life. When the client leaves, the turn in flight drains to its terminal event and the
healthy socket goes back to the pool for the next client (R-03).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

from opentelemetry import context as otel_context

from gateway.config import Account
from gateway.context import GatewayContext
from gateway.events import error_event
from gateway.logs import TurnLogFacts, log_turn
from gateway.session import ClientSink
from gateway.turn import TurnTracker
from gateway.upstream.dialer import turn_headers
from gateway.upstream.headers import forwarded_headers
from gateway.upstream.ws import UpstreamClosed, UpstreamError, UpstreamWS
from pool import Lease

log = logging.getLogger("gateway.passthrough")
MODE = "passthrough"


class PassthroughForwarder:
    def __init__(self, ctx: GatewayContext, account: Account, lease: Lease) -> None:
        self.ctx = ctx
        self.account = account
        self.lease = lease
        self.conn: UpstreamWS = lease.conn  # type: ignore[assignment]
        self.broken = False
        self._closed = False
        self.trace_parent: otel_context.Context | None = None
        ctx.active[account.id] += 1

    @classmethod
    async def open(
        cls, ctx: GatewayContext, account: Account, client_headers: Mapping[str, str]
    ) -> PassthroughForwarder:
        """Lease (usually dial) the upstream socket before the client handshake is accepted."""
        token = turn_headers.set(tuple(forwarded_headers(client_headers)))
        try:
            lease = await ctx.pools.pool(account.id).acquire()
        finally:
            turn_headers.reset(token)
        forwarder = cls(ctx, account, lease)
        forwarder.trace_parent = ctx.tracing.parent_context(client_headers)
        return forwarder

    @property
    def upstream_turn_state(self) -> str | None:
        return self.conn.response_headers.get("x-codex-turn-state")

    async def run_turn(self, frame: str, sink: ClientSink) -> None:
        with self.ctx.tracing.turn_span("chat", self.trace_parent) as span:
            tracker = TurnTracker()
            await self._run_turn(frame, sink, tracker)
            outcome = tracker.outcome.value if tracker.outcome else "upstream_lost"
            facts = TurnLogFacts(self.account.id, tracker, drained=sink.gone)
            log_turn(MODE, outcome, facts, tracker.started_at, self.conn.conn_id)
            if span.is_recording():
                span.set_attribute("gateway.instance", self.ctx.instance_id)
                span.set_attribute("gateway.mode", MODE)
                span.set_attribute("gateway.account", self.account.id)
                span.set_attribute("gateway.drained_after_disconnect", sink.gone)
                if tracker.response_id:
                    span.set_attribute("gen_ai.response.id", tracker.response_id)
                span.set_attribute("gen_ai.usage.input_tokens", tracker.input_tokens)
                span.set_attribute("gen_ai.usage.output_tokens", tracker.output_tokens)

    async def _run_turn(self, frame: str, sink: ClientSink, tracker: TurnTracker) -> None:
        ws_cfg = self.ctx.cfg.openai_ws
        metrics = self.ctx.metrics
        if self.broken or self.conn.closed:
            await self._upstream_lost(sink, self.conn.close_info)
            return
        await self.conn.stop_watch()
        try:
            await self.conn.send_text(frame, timeout=ws_cfg.write_timeout_s)
            read_timeout = ws_cfg.read_timeout_s
            added = metrics.added_latency.labels(MODE)
            send = sink.send
            while not tracker.done:
                message = await self.conn.recv(timeout=read_timeout)
                received = time.perf_counter()
                tracker.observe(message)
                if await send(message):
                    added.observe(time.perf_counter() - received)
        except TimeoutError:
            self.broken = True
            await self._upstream_lost(sink, None, "upstream went silent")
            return
        except UpstreamClosed as exc:
            self.broken = True
            await self._upstream_lost(sink, exc)
            return
        except UpstreamError as exc:
            self.broken = True
            await self._upstream_lost(sink, None, str(exc))
            return
        if tracker.error is not None:
            self.broken = True  # an upstream error event retires the socket
        metrics.events.labels(MODE).inc(tracker.events)
        if tracker.ttft_s is not None:
            metrics.ttft.labels(MODE).observe(tracker.ttft_s)
        metrics.turns.labels(MODE, tracker.outcome.value if tracker.outcome else "unknown").inc()
        if sink.gone:
            metrics.drained.inc()

    async def _upstream_lost(
        self, sink: ClientSink, closed: UpstreamClosed | None, why: str = ""
    ) -> None:
        """Passthrough is transparent: the client sees the upstream's close."""
        self.broken = True
        code = closed.code if closed is not None else 1011
        if code in (1005, 1006) or code < 1000:
            code = 1011
        reason = (closed.reason if closed is not None else why) or "upstream connection lost"
        self.ctx.metrics.turns.labels(MODE, "upstream_lost").inc()
        await sink.close(code, reason)

    async def on_other_frame(self, frame: str, etype: str, sink: ClientSink) -> None:
        # Unknown or control frames go upstream verbatim; the upstream answers for itself.
        try:
            await self.conn.send_text(frame, timeout=self.ctx.cfg.openai_ws.write_timeout_s)
        except UpstreamError:
            self.broken = True
            await sink.send(error_event(502, "upstream_unavailable", "upstream connection lost"))

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.ctx.active[self.account.id] -= 1
        broken = self.broken or self.conn.closed
        if not broken:
            self.conn.watch_idle()
        self.lease.release(broken=broken)
