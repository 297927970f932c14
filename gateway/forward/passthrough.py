"""Passthrough mode: one upstream socket per client socket, frames relayed verbatim.

The upstream socket is dialled (or leased idle from the account's pool) on the
client's first frame, not at the client's handshake: an idle client socket holds no
upstream socket, so idle clients cannot take an account's ``max_conns``. The lease
then lasts for the client socket's life. When the client leaves, the turn in flight
drains to its terminal event and the healthy socket goes back to the pool.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Mapping

import msgspec
from opentelemetry import context as otel_context

from gateway.config import Account
from gateway.context import GatewayContext
from gateway.events import (
    account_error_event,
    error_event,
    is_account_error,
    sanitize_upstream_error,
    transport_error_message,
)
from gateway.guard import log_client_mistake
from gateway.logs import TurnLogFacts, log_turn
from gateway.session import ClientSink
from gateway.turn import TurnTracker
from gateway.upstream.dialer import turn_headers
from gateway.upstream.headers import forwarded_headers
from gateway.upstream.ws import HandshakeRejected, UpstreamClosed, UpstreamError, UpstreamWS
from pool import Lease, PoolError, PoolExhausted

log = logging.getLogger("gateway.passthrough")
MODE = "passthrough"


def dial_failure_event(exc: Exception, account_id: str) -> str:
    """What the client sees when its upstream socket cannot be opened (no hosts, no keys)."""
    cause = exc.__cause__ or exc
    if isinstance(cause, HandshakeRejected):
        if is_account_error(cause.status, None):
            return account_error_event(account_id, cause.status, None)
        if cause.status == 429:
            return error_event(
                429,
                "rate_limit_exceeded",
                "the upstream is rate-limiting this account; retry shortly",
                error_type="server_error",
            )
        return error_event(
            503,
            "upstream_handshake_rejected",
            f"the upstream refused the WebSocket (HTTP {cause.status}); retry shortly",
            error_type="server_error",
        )
    if isinstance(exc, PoolExhausted):
        return error_event(
            503,
            "pool_exhausted",
            "all upstream sockets for this account are busy; retry shortly",
            error_type="server_error",
        )
    return error_event(
        503, "upstream_unavailable", transport_error_message(), error_type="server_error"
    )


_object_check = msgspec.json.Decoder(dict[str, msgspec.Raw])


async def _frame_is_json_object(frame: str, sink: ClientSink) -> bool:
    """Refuse undecodable frames here (one pass, nested values skipped) rather than upstream."""
    try:
        _object_check.decode(frame)
    except RecursionError:
        reason = "JSON nesting is too deep"
    except msgspec.ValidationError:
        reason = "message must be a JSON object"
    except msgspec.DecodeError as exc:
        reason = f"malformed JSON: {exc}"
    else:
        return True
    log_client_mistake("invalid_json", "undecodable frame; answered 400")
    await sink.send(error_event(400, "invalid_json", reason))
    return False


class PassthroughForwarder:
    def __init__(
        self, ctx: GatewayContext, account: Account, client_headers: Mapping[str, str]
    ) -> None:
        self.ctx = ctx
        self.account = account
        # Echo the client's token, else mint one; it goes upstream on the dial.
        self.turn_state = client_headers.get("x-codex-turn-state") or (
            f"ts_{secrets.token_urlsafe(12)}"
        )
        fwd = dict(forwarded_headers(client_headers))
        fwd["x-codex-turn-state"] = self.turn_state
        self.fwd_headers = tuple(fwd.items())
        self.lease: Lease | None = None
        self.conn: UpstreamWS | None = None
        self.broken = False
        self._closed = False
        self.trace_parent: otel_context.Context | None = ctx.tracing.parent_context(client_headers)
        ctx.active[account.id] += 1

    async def _upstream(self, sink: ClientSink) -> UpstreamWS | None:
        """The client's upstream socket, leased on first use; None after telling the client."""
        if self.conn is not None:
            return self.conn
        token = turn_headers.set(self.fwd_headers)
        try:
            lease = await self.ctx.pools.pool(self.account.id).acquire()
        except PoolError as exc:
            cause = exc.__cause__ or exc
            log.warning(
                "passthrough upstream dial failed",
                extra={
                    "event": "upstream_dial_failed",
                    "account": self.account.id,
                    "error": f"{type(cause).__name__}: {cause}",
                },
            )
            self.ctx.metrics.turns.labels(MODE, "upstream_failed").inc()
            await sink.send(dial_failure_event(exc, self.account.id))
            return None
        finally:
            turn_headers.reset(token)
        if self._closed:  # the client left while we dialled
            lease.release(broken=False)
            return None
        self.lease = lease
        self.conn = lease.conn  # type: ignore[assignment]
        return self.conn

    async def run_turn(self, frame: str, sink: ClientSink) -> None:
        with self.ctx.tracing.turn_span("chat", self.trace_parent) as span:
            tracker = TurnTracker()
            await self._run_turn(frame, sink, tracker)
            outcome = tracker.outcome.value if tracker.outcome else "upstream_lost"
            facts = TurnLogFacts(self.account.id, tracker, drained=sink.gone)
            log_turn(
                MODE, outcome, facts, tracker.started_at, self.conn.conn_id if self.conn else None
            )
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
        if not await _frame_is_json_object(frame, sink):
            return
        conn = await self._upstream(sink)
        if conn is None:
            return
        if self.broken or conn.closed:
            await self._upstream_lost(sink, conn.close_info)
            return
        conn.stop_watch()
        account_id = self.account.id
        try:
            await conn.send_text(frame, timeout=ws_cfg.write_timeout_s)
            read_timeout = ws_cfg.read_timeout_s
            added = metrics.added_latency.labels(MODE)
            send, send_nowait = sink.send, sink.send_nowait
            recv, recv_nowait = conn.recv, conn.recv_nowait
            observe, perf_counter = tracker.observe, time.perf_counter
            while not tracker.done:
                # A queued message, or wait for one (a coroutine only when waiting).
                message = recv_nowait()
                if message is None:
                    message = await recv(read_timeout)
                received = perf_counter()
                etype = observe(message)
                if tracker.done:
                    message = sanitize_upstream_error(message, etype, account_id)
                sent = send_nowait(message)
                if sent is None:
                    sent = await send(message)
                if sent:
                    added.observe(perf_counter() - received)
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
            log.warning(
                "passthrough upstream failed mid-turn",
                extra={"event": "upstream_lost", "account": account_id, "error": str(exc)},
            )
            await self._upstream_lost(sink, None)
            return
        if tracker.error is not None:
            # An upstream error event retires the socket; the upstream did not close it,
            # so the client keeps its socket and the next turn dials a fresh one.
            self._retire()
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
        # The upstream's close reason is its own words; transport details stay in the log.
        reason = (closed.reason if closed is not None else why) or "upstream connection lost"
        self.ctx.metrics.turns.labels(MODE, "upstream_lost").inc()
        await sink.close(code, reason)

    async def on_other_frame(self, frame: str, etype: str, sink: ClientSink) -> None:
        # Unknown or control frames go upstream verbatim; the upstream answers for itself.
        conn = await self._upstream(sink)
        if conn is None:
            return
        try:
            await conn.send_text(frame, timeout=self.ctx.cfg.openai_ws.write_timeout_s)
        except UpstreamError:
            self.broken = True
            await sink.send(error_event(502, "upstream_unavailable", "upstream connection lost"))

    def _retire(self) -> None:
        if self.lease is not None:
            self.lease.release(broken=True)
        self.lease = None
        self.conn = None

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.ctx.active[self.account.id] -= 1
        if self.lease is None or self.conn is None:
            return  # never dialled: nothing to give back
        broken = self.broken or self.conn.closed
        if not broken:
            self.conn.watch_idle()
        self.lease.release(broken=broken)
