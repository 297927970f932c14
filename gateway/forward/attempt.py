"""One WebSocket attempt of a turn: lease a pooled upstream socket, normalize the request
for that socket (once), write it, relay the events, give the socket back at the terminal.

An attempt either delivers the turn, ends it with something the client already saw, or
fails before anything reached the client (``AttemptFailed``); the recovery loop in
``ctx_pool`` turns a failure into the next ``Plan``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import msgspec

from gateway.accounts import retry_after_s
from gateway.config import Account
from gateway.context import GatewayContext
from gateway.events import sanitize_upstream_error
from gateway.forward.continuation import Continuation
from gateway.forward.facts import Outcome, TurnFacts
from gateway.forward.liveness import after_silence, first_wait, recv_live
from gateway.recovery import (
    Failure,
    account_health_effect,
    classify_error_event,
    classify_exception,
)
from gateway.session import ClientSink
from gateway.transcript import Transcript
from gateway.turn import TurnTracker, UpstreamErrorInfo
from gateway.upstream.dialer import turn_headers
from gateway.upstream.ws import HandshakeRejected, UpstreamError, UpstreamWS, byte_size
from normalizer import ContinuationState, NormalizeResult, PendingCall, RequestSnapshot, normalize
from pool import DialFailed, Lease

log = logging.getLogger("gateway.ctx_pool")
MODE = "ctx_pool"


class Plan(msgspec.Struct, frozen=True):
    """What the next attempt sends, and where. Recovery makes a new plan; it never
    re-enters the middle of an attempt."""

    request: RequestSnapshot  # as the client sent it, plus any recovery edits
    cont: Continuation
    account: Account
    fresh_socket: bool = False  # do not ask the pool for the socket holding the anchor
    replay: bool = False  # the upstream lost the anchor: send the whole conversation


@dataclass(slots=True)
class AttemptFailed(Exception):
    failure: Failure
    error: UpstreamErrorInfo | None = None
    detail: str = ""
    retry_after_s: float | None = None
    after_events: bool = False  # events already reached the client: no retry possible


@dataclass(slots=True)
class Delivered:
    """A turn whose terminal event reached the client."""

    sent: RequestSnapshot  # normalized, exactly as sent upstream
    tracker: TurnTracker
    conn: UpstreamWS | None = None


def note_account_health(ctx: GatewayContext, account: Account, failed: AttemptFailed) -> None:
    """Tell the scheduler what a failed attempt said about the account that served it."""
    effect = account_health_effect(failed.failure)
    ctx.scheduler.note(account.id, effect, failed.retry_after_s)


def prepare(plan: Plan, holder: str | None, transcript: Transcript) -> NormalizeResult | None:
    """Normalize once for the socket the attempt got. When that socket cannot resolve the
    anchor (and it is not a stored response), the transcript stands in for it and the
    request goes out whole; None when nothing can stand in (the client must replay)."""
    request, cont = plan.request, plan.cont
    anchor = cont.anchor if cont.anchor is not None else request.previous_response_id
    available = not plan.replay and (
        request.store is True or cont.stored or (holder is not None and holder == anchor)
    )
    pending = (
        None
        if cont.pending is None
        else tuple(PendingCall(call_id, kind) for call_id, kind in cont.pending.items())
    )
    state = ContinuationState(
        last_response_id=anchor,
        pending_calls=pending,
        previous_available=available,
        transcript=transcript.items if transcript.covers(anchor) else None,
    )
    result = normalize(request, state)
    if result.request.previous_response_id is not None and not available:
        return None
    return result


def _retry_after(exc: BaseException) -> float | None:
    cause = exc.__cause__ if isinstance(exc, DialFailed) else exc
    if isinstance(cause, HandshakeRejected):
        return retry_after_s(cause.headers)
    return None


class WsAttempt:
    """Runs attempts for one client socket's turns."""

    def __init__(
        self,
        ctx: GatewayContext,
        transcript: Transcript,
        fwd_headers: tuple[tuple[str, str], ...],
    ) -> None:
        self.ctx = ctx
        self.transcript = transcript
        self.fwd_headers = fwd_headers

    async def run(self, plan: Plan, sink: ClientSink, facts: TurnFacts) -> Delivered | Outcome:
        """Long because it is one attempt from lease to release; only what the upstream
        write needs happens before it (the bookkeeping waits until the request is out)."""
        ctx = self.ctx
        preferred = None if plan.fresh_socket else plan.cont.conn_id
        lease = (
            None  # traced: the acquire gets its span
            if ctx.tracing.enabled
            else ctx.pools.pool(plan.account.id).acquire_ready(preferred_conn_id=preferred)
        )
        if lease is None:
            lease = await self._acquire(plan, preferred)
        conn: UpstreamWS = lease.conn  # type: ignore[assignment]
        conn.stop_watch()
        broken = True
        try:
            result = prepare(plan, ctx.conn_holds(conn), self.transcript)
            if result is None:
                broken = False
                return Outcome.PREVIOUS_NOT_FOUND
            tracker = TurnTracker()
            facts.tracker = tracker
            try:
                if ctx.tracing.enabled:
                    size = byte_size(result.payload)
                    with ctx.tracing.child("upstream.write", **{"gateway.bytes": size}):
                        await conn.send_text(result.payload, ctx.cfg.openai_ws.write_timeout_s)
                else:
                    await conn.send_text(result.payload, ctx.cfg.openai_ws.write_timeout_s)
                self._note(result, plan, facts)
                await self._relay(conn, tracker, sink, plan.account.id)
            except (UpstreamError, TimeoutError, OSError) as exc:
                ctx.conn_forget(conn)
                raise AttemptFailed(
                    classify_exception(exc),
                    detail=str(exc),
                    after_events=tracker.events > 0 and not (tracker.events == 1 and tracker.error),
                ) from None
            if tracker.error is not None:
                ctx.conn_forget(conn)
                if tracker.events == 1:
                    error = tracker.error
                    raise AttemptFailed(
                        classify_error_event(error),
                        error=error,
                        detail=error.message,
                        retry_after_s=retry_after_s(error.headers, error.message),
                    )
                return Outcome.ERROR  # relayed mid-stream; the error event was the terminal
            broken = False
        finally:
            broken = broken or conn.closed
            if not broken:
                conn.watch_idle()  # notice an upstream close while the socket sits in the pool
            # The socket goes back at the terminal event: the binding never holds it.
            lease.release(broken=broken, bound=(not broken and plan.request.store is not True))
            facts.conn_reused = reused = lease.reused
            ctx.metrics.pool_acquires.labels(
                plan.account.id, "reused" if reused else "dialed"
            ).inc()
        return Delivered(result.request, tracker, conn)

    async def _acquire(self, plan: Plan, preferred: str | None) -> Lease:
        """A socket that needs vetting, dialling or waiting for (``acquire_ready`` had
        none leasable as is)."""
        ctx = self.ctx
        account = plan.account
        token = turn_headers.set(self.fwd_headers)
        try:
            pool = ctx.pools.pool(account.id)
            if ctx.tracing.enabled:
                with ctx.tracing.child("pool.acquire", **{"gateway.account": account.id}) as span:
                    lease = await pool.acquire(preferred_conn_id=preferred)
                    span.set_attribute("gateway.conn_reused", lease.reused)
                    span.set_attribute("gateway.preferred_hit", lease.preferred_hit)
            else:
                lease = await pool.acquire(preferred_conn_id=preferred)
        except Exception as exc:
            raise AttemptFailed(
                classify_exception(exc), detail=str(exc), retry_after_s=_retry_after(exc)
            ) from None
        finally:
            turn_headers.reset(token)
        return lease

    def _note(self, result: NormalizeResult, plan: Plan, facts: TurnFacts) -> None:
        """What the attempt sent, for metrics and logs (after the write: not on its path)."""
        ctx = self.ctx
        metrics = ctx.metrics
        decision = result.decision
        metrics.normalizer.labels(decision.state.value, decision.reason.value).inc()
        facts.normalizer_state = decision.state.value
        facts.normalizer_reason = decision.reason.value
        if decision.previous_response_id_action == "dropped" and not plan.replay:
            metrics.recoveries.labels("socket_state_lost_replay", "attempted").inc()
        sampler = ctx.payload_sampler
        if sampler.sample():  # only a sampled payload is ever rendered for a log
            log.info(
                "upstream request payload",
                extra={
                    "event": "payload_sample",
                    "account_id": plan.account.id,
                    "bytes": byte_size(result.payload),
                    "payload": sampler.render(result.payload),
                },
            )

    async def _relay(
        self, conn: UpstreamWS, tracker: TurnTracker, sink: ClientSink, account_id: str
    ) -> None:
        """Long because it is the per-event loop: every call and attribute lookup in it
        is paid once per relayed event, so the read is inlined (see ``recv_live``)."""
        ws_cfg = self.ctx.cfg.openai_ws
        added = self.ctx.metrics.added_latency.labels(MODE)
        send, send_nowait = sink.send, sink.send_nowait
        observe = tracker.observe
        recv, recv_nowait = conn.recv, conn.recv_nowait
        perf_counter = time.perf_counter
        silence_s, read_timeout_s = ws_cfg.liveness_interval_s, ws_cfg.read_timeout_s
        wait = first_wait(silence_s, read_timeout_s)
        with self.ctx.tracing.child("upstream.first_byte"):
            message = await recv_live(
                conn,
                silence_s=silence_s,
                pong_timeout_s=ws_cfg.ping_timeout_s,
                read_timeout_s=read_timeout_s,
            )
        while True:
            received = perf_counter()
            etype = observe(message)
            if etype == "error" and tracker.events == 1:
                return  # decided by the caller: recover, retry or relay
            if tracker.done:  # a terminal may carry an account error: never the key
                message = sanitize_upstream_error(message, etype, account_id)
            sent = send_nowait(message)
            if sent is None:
                sent = await send(message)
            if sent:
                added.observe(perf_counter() - received)
            if tracker.done:
                return
            queued = recv_nowait()
            if queued is not None:
                message = queued
                continue
            try:
                message = await recv(wait)
            except TimeoutError:
                if wait >= read_timeout_s:
                    raise
                message = await after_silence(
                    conn,
                    silence_s=silence_s,
                    pong_timeout_s=ws_cfg.ping_timeout_s,
                    read_timeout_s=read_timeout_s,
                )
