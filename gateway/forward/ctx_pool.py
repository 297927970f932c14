"""ctx_pool mode: a pooled upstream socket per turn, normalizer before every write,
continuation on any instance, recovery matrix, retries and transparent HTTP fallback.

The turn is a straight line (resolve → account → lease → normalize → write → relay →
bind → release). Failures before the first event reached the client leave it at one
place, ``recovery.next_action``, which picks retry, align, replay, HTTP, or an error.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.trace import Span

from gateway.auth import ClientIdentity
from gateway.config import Account
from gateway.context import GatewayContext
from gateway.events import error_event
from gateway.forward.http_fallback import HttpTurnFailed, run_http_turn, synthesize_warmup
from gateway.logs import log_turn
from gateway.recovery import (
    Action,
    Failure,
    RetryPolicy,
    TurnAttempts,
    classify_error_event,
    classify_exception,
    next_action,
)
from gateway.session import ClientSink
from gateway.tracing import mark_error
from gateway.transcript import Transcript
from gateway.turn import TurnTracker, UpstreamErrorInfo
from gateway.upstream.dialer import turn_headers
from gateway.upstream.headers import forwarded_headers
from gateway.upstream.ws import UpstreamError, UpstreamWS
from normalizer import ContinuationState, Decision, PendingCall, normalize
from normalizer.snapshot import RequestDecodeError, RequestSnapshot, decode_request, encode_request
from pool import Lease
from statestore import TurnBinding

log = logging.getLogger("gateway.ctx_pool")
MODE = "ctx_pool"


@dataclass(slots=True)
class _AttemptFailed(Exception):
    failure: Failure
    error: UpstreamErrorInfo | None = None
    detail: str = ""


@dataclass(slots=True)
class TurnFacts:
    """What one turn did, for its span and logs."""

    account_id: str = ""
    conn_reused: bool | None = None
    normalizer_state: str = ""
    normalizer_reason: str = ""
    retries: int = 0
    fallback: str = ""
    recovery: str = ""
    drained: bool = False
    tracker: TurnTracker | None = None


@dataclass(slots=True)
class _Continuation:
    anchor: str | None  # the response this turn continues (after alignment)
    account_id: str | None
    pending: dict[str, str] | None
    conn_id: str | None
    session_last: str | None


class CtxPoolForwarder:
    def __init__(
        self,
        ctx: GatewayContext,
        identity: ClientIdentity,
        headers: Mapping[str, str],
        session_key: str | None,
    ) -> None:
        self.ctx = ctx
        self.group = identity.group
        self.client_headers = headers
        self.session_key = session_key or f"sock:{ctx.instance_id}:{uuid.uuid4().hex}"
        self.fwd_headers = tuple(forwarded_headers(headers))
        self.turn_state: str | None = headers.get("x-codex-turn-state")
        # Per-socket continuation state: the fast path for the next turn on this socket.
        self.last_response_id: str | None = None
        self.last_account_id: str | None = None
        self.last_conn_id: str | None = None
        self.last_pending: dict[str, str] | None = None
        ws = ctx.cfg.openai_ws
        self.transcript = Transcript(ctx.transcripts, ws.transcript_max_bytes_per_socket)
        self.policy = RetryPolicy(
            max_attempts=ws.retry_max_attempts,
            initial_s=ws.retry_backoff_initial_ms / 1000,
            max_s=ws.retry_backoff_max_ms / 1000,
            jitter=ws.retry_jitter_ratio,
            budget_s=ws.retry_total_budget_ms / 1000,
        )
        self.rng = random.Random()
        self.trace_parent = ctx.tracing.parent_context(headers)
        self.facts = TurnFacts()

    async def handshake_turn_state(self) -> str | None:
        """Echo the client's token, else the session's stored one, else mint one (R-05)."""
        if self.turn_state:
            return self.turn_state
        stored = await self.ctx.store.get_turn_state(self.group, self.session_key)
        self.turn_state = stored or f"ts_{secrets.token_urlsafe(12)}"
        return self.turn_state

    # -- the turn ----------------------------------------------------------------------
    async def run_turn(self, frame: str, sink: ClientSink) -> None:
        with self.ctx.tracing.turn_span("chat", self.trace_parent) as span:
            self.facts = facts = TurnFacts()
            started = time.perf_counter()
            outcome = await self._run_turn(frame, sink)
            self.ctx.metrics.turns.labels(MODE, outcome).inc()
            log_turn(MODE, outcome, facts, started, self.last_conn_id)
            if span.is_recording():
                self._annotate(span, facts, outcome)

    def _annotate(self, span: Span, facts: TurnFacts, outcome: str) -> None:
        span.set_attribute("gateway.instance", self.ctx.instance_id)
        span.set_attribute("gateway.group", self.group)
        span.set_attribute("gateway.mode", MODE)
        span.set_attribute("gateway.outcome", outcome)
        span.set_attribute("gateway.account", facts.account_id)
        if facts.conn_reused is not None:
            span.set_attribute("gateway.conn_reused", facts.conn_reused)
        span.set_attribute("gateway.normalizer.state", facts.normalizer_state)
        span.set_attribute("gateway.normalizer.reason", facts.normalizer_reason)
        span.set_attribute("gateway.retries", facts.retries)
        span.set_attribute("gateway.fallback", facts.fallback)
        span.set_attribute("gateway.recovery", facts.recovery)
        span.set_attribute("gateway.drained_after_disconnect", facts.drained)
        tracker = facts.tracker
        if tracker is not None:
            if tracker.response_id:
                span.set_attribute("gen_ai.response.id", tracker.response_id)
            if tracker.model:
                span.set_attribute("gen_ai.response.model", tracker.model)
            span.set_attribute("gen_ai.usage.input_tokens", tracker.input_tokens)
            span.set_attribute("gen_ai.usage.output_tokens", tracker.output_tokens)
            if tracker.ttft_s is not None:
                span.set_attribute("gateway.ttft_ms", round(tracker.ttft_s * 1000, 3))
        if outcome not in ("completed", "http_completed"):
            mark_error(span, outcome)

    async def _run_turn(self, frame: str, sink: ClientSink) -> str:
        try:
            request = decode_request(frame)
        except RequestDecodeError as exc:
            await self._client_error(sink, 400, "invalid_request", str(exc))
            return "invalid_request"
        if request.type != "response.create":
            await self._client_error(
                sink, 400, "unsupported_message_type", f"unsupported message type {request.type!r}"
            )
            return "invalid_request"
        if request.model:
            trace.get_current_span().set_attribute("gen_ai.request.model", request.model)
        with self.ctx.tracing.child("statestore.lookup"):
            cont = await self._continuation(request)
        account = self._choose_account(cont)
        if account is None:
            await self._client_error(
                sink, 503, "no_account", "no upstream account is configured for this key's group"
            )
            return "no_account"
        self.facts.account_id = account.id
        self.ctx.active[account.id] += 1
        try:
            return await self._serve(request, cont, account, sink)
        finally:
            self.ctx.active[account.id] -= 1
            self.facts.drained = sink.gone

    async def _continuation(self, request: RequestSnapshot) -> _Continuation:
        prev = request.previous_response_id
        store = self.ctx.store
        if prev is not None and prev == self.last_response_id:
            return _Continuation(
                prev, self.last_account_id, self.last_pending, self.last_conn_id, prev
            )
        found = await store.lookup(self.group, response_id=prev, session_key=self.session_key)
        session_last = self.last_response_id or found.session_last_response_id
        anchor = prev
        if session_last and (prev is None or (request.store is not True and prev != session_last)):
            anchor = session_last  # inference / store:false alignment target (normalizer decides)
        if anchor == prev:
            return _Continuation(
                anchor, found.account_id, found.pending_calls, found.conn_id, session_last
            )
        if anchor == self.last_response_id:
            return _Continuation(
                anchor, self.last_account_id, self.last_pending, self.last_conn_id, session_last
            )
        assert anchor is not None
        lookup = await store.lookup(self.group, response_id=anchor, session_key=None)
        return _Continuation(
            anchor,
            lookup.account_id or found.account_id,
            lookup.pending_calls,
            lookup.conn_id,
            session_last,
        )

    def _choose_account(self, cont: _Continuation) -> Account | None:
        owned = self.ctx.account_in_group(cont.account_id, self.group)
        return owned or self.ctx.pick_account(self.group)

    async def _serve(
        self, request: RequestSnapshot, cont: _Continuation, account: Account, sink: ClientSink
    ) -> str:
        ctx = self.ctx
        metrics = ctx.metrics
        attempts = TurnAttempts()
        started = time.monotonic()
        fresh_socket = False
        while True:
            resolution = ctx.resolution(account)
            if resolution.transport == "http":
                metrics.fallbacks.labels(resolution.reason).inc()
                self.facts.fallback = resolution.reason
                return await self._serve_http(request, cont, account, sink)
            attempts.attempts += 1
            try:
                return await self._attempt_ws(request, cont, account, sink, fresh_socket)
            except _AttemptFailed as failed:
                failure, error, detail = failed.failure, failed.error, failed.detail
            if sink.gone:
                return "client_gone"
            backoff = self.policy.backoff(attempts.retries + 1, self.rng)
            action = next_action(
                failure,
                attempts,
                self.policy,
                elapsed_s=time.monotonic() - started,
                next_backoff_s=backoff,
                can_align=bool(
                    cont.session_last
                    and request.previous_response_id
                    and cont.session_last != request.previous_response_id
                ),
                has_transcript=self.transcript.covers(request.previous_response_id)
                or (
                    request.previous_response_id is None and failure is Failure.TOOL_OUTPUT_MISSING
                ),
                recovery_enabled=ctx.cfg.openai_ws.recovery_enabled,
            )
            attempts.tried.add(action)
            log.info(
                "turn attempt failed",
                extra={
                    "event": "turn_attempt_failed",
                    "failure": failure.value,
                    "action": action.value,
                    "account_id": account.id,
                    "attempt": attempts.attempts,
                    "detail": detail[:160],
                },
            )
            if action is not Action.RETRY:
                self.facts.recovery = action.value
            if action is Action.RETRY:
                attempts.retries += 1
                self.facts.retries = attempts.retries
                metrics.retry_attempts.labels(failure.value).inc()
                await asyncio.sleep(backoff)
                continue
            if action is Action.ALIGN:
                assert cont.session_last is not None
                metrics.recoveries.labels("previous_response_not_found_align", "attempted").inc()
                request = request.with_previous_response_id(cont.session_last)
                cont = _Continuation(
                    cont.session_last, cont.account_id, None, None, cont.session_last
                )
                continue
            if action is Action.REPLAY:
                attempts.replayed.add(failure)
                expanded = self.transcript.expand(request)
                if expanded is None:
                    expanded = request.with_previous_response_id(None)
                metrics.recoveries.labels(failure.value + "_replay", "attempted").inc()
                request = expanded
                fresh_socket = True
                continue
            if action is Action.FALLBACK_HTTP:
                ctx.start_cooldown(account.id)
                self.facts.fallback = failure.value
                metrics.fallbacks.labels(failure.value).inc()
                return await self._serve_http(request, cont, account, sink)
            if action is Action.RELAY_ERROR and error is not None:
                await sink.send(error.frame)
                metrics.client_errors.labels(error.code or "upstream_error").inc()
                return "upstream_error"
            if failure in (Failure.PREVIOUS_NOT_FOUND, Failure.TOOL_OUTPUT_MISSING):
                metrics.recoveries.labels(failure.value, "client_replay").inc()
                await self._previous_not_found(sink, request)
                return "previous_response_not_found"
            if failure in {Failure.POOL_EXHAUSTED}:
                await self._client_error(
                    sink,
                    503,
                    "pool_exhausted",
                    detail or "all upstream sockets for this account are busy; retry shortly",
                    "server_error",
                )
                return "pool_exhausted"
            metrics.retry_exhausted.inc()
            await self._client_error(
                sink,
                503,
                "upstream_unavailable",
                f"upstream unavailable after {attempts.attempts} attempt(s): {failure.value}",
                "server_error",
            )
            return "retry_exhausted"

    async def _attempt_ws(
        self,
        request: RequestSnapshot,
        cont: _Continuation,
        account: Account,
        sink: ClientSink,
        fresh_socket: bool,
    ) -> str:
        ctx = self.ctx
        ws_cfg = ctx.cfg.openai_ws
        metrics = ctx.metrics
        preferred = None if fresh_socket else cont.conn_id
        token = turn_headers.set(self.fwd_headers)
        try:
            with ctx.tracing.child(
                "pool.acquire", **{"gateway.account": account.id}
            ) as acquire_span:
                lease = await ctx.pools.pool(account.id).acquire(preferred_conn_id=preferred)
                if acquire_span.is_recording():
                    acquire_span.set_attribute("gateway.conn_reused", lease.reused)
                    acquire_span.set_attribute("gateway.preferred_hit", lease.preferred_hit)
        except Exception as exc:
            raise _AttemptFailed(classify_exception(exc), detail=str(exc)) from None
        finally:
            turn_headers.reset(token)
        self.facts.conn_reused = lease.reused
        metrics.pool_acquires.labels(account.id, "reused" if lease.reused else "dialed").inc()
        conn: UpstreamWS = lease.conn  # type: ignore[assignment]
        await conn.stop_watch()
        broken = True
        try:
            sent, decision = self._prepare(request, cont, lease)
            if sent is None:
                broken = False
                await self._previous_not_found(sink, request)
                return "previous_response_not_found"
            metrics.normalizer.labels(decision.state.value, decision.reason.value).inc()
            self.facts.normalizer_state = decision.state.value
            self.facts.normalizer_reason = decision.reason.value
            payload = encode_request(sent)
            sampler = ctx.payload_sampler
            if sampler.sample():  # only a sampled payload is ever rendered for a log
                log.info(
                    "upstream request payload",
                    extra={
                        "event": "payload_sample",
                        "account_id": account.id,
                        "bytes": len(payload),
                        "payload": sampler.render(payload),
                    },
                )
            tracker = TurnTracker()
            self.facts.tracker = tracker
            try:
                with ctx.tracing.child("upstream.write", **{"gateway.bytes": len(payload)}):
                    await conn.send_text(payload, timeout=ws_cfg.write_timeout_s)
                await self._relay(conn, tracker, sink)
            except (UpstreamError, TimeoutError, OSError) as exc:
                ctx.conn_forget(lease.conn_id)
                if tracker.events > 0 and not (tracker.events == 1 and tracker.error):
                    # Events already reached the client: no retry; the socket stays usable.
                    await self._client_error(
                        sink,
                        502,
                        "upstream_stream_interrupted",
                        f"upstream connection lost mid-response: {exc}",
                        "server_error",
                    )
                    return "interrupted"
                raise _AttemptFailed(classify_exception(exc), detail=str(exc)) from None
            if tracker.error is not None:
                ctx.conn_forget(lease.conn_id)
                if tracker.events == 1:
                    raise _AttemptFailed(
                        classify_error_event(tracker.error),
                        error=tracker.error,
                        detail=tracker.error.message,
                    )
                return "error"  # relayed mid-stream; the error event was the terminal
            broken = False
            await self._finish(sent, tracker, account, lease, sink)
            return tracker.outcome.value if tracker.outcome else "unknown"
        finally:
            broken = broken or conn.closed
            if not broken:
                conn.watch_idle()  # notice an upstream close while the socket sits in the pool
            lease.release(broken=broken, bound=(not broken and request.store is not True))

    def _prepare(
        self, request: RequestSnapshot, cont: _Continuation, lease: Lease
    ) -> tuple[RequestSnapshot | None, Decision]:
        """Normalize for this socket; expand to the full transcript when the socket lacks the state."""
        prev = request.previous_response_id
        holder = self.ctx.conn_holds(lease.conn_id)
        store_true = request.store is True
        anchor = cont.anchor if cont.anchor is not None else prev
        available = store_true or (holder is not None and holder == anchor)
        pending = (
            None
            if cont.pending is None
            else tuple(PendingCall(cid, kind) for cid, kind in cont.pending.items())
        )
        state = ContinuationState(
            last_response_id=anchor, pending_calls=pending, previous_available=available
        )
        result = normalize(request, state)
        decision = result.decision
        if decision.state.value == "needs_full_replay" or (
            not available and result.request.previous_response_id is not None
        ):
            expanded = self.transcript.expand(result.request)
            if expanded is None:
                return None, decision
            self.ctx.metrics.recoveries.labels("socket_state_lost_replay", "attempted").inc()
            result = normalize(expanded, ContinuationState(pending_calls=()))
        return result.request, result.decision

    async def _relay(self, conn: UpstreamWS, tracker: TurnTracker, sink: ClientSink) -> None:
        read_timeout = self.ctx.cfg.openai_ws.read_timeout_s
        added = self.ctx.metrics.added_latency.labels(MODE)
        send = sink.send
        observe = tracker.observe
        with self.ctx.tracing.child("upstream.first_byte"):
            first = await conn.recv(timeout=read_timeout)
        conn.push_back(first)
        while True:
            message = await conn.recv(timeout=read_timeout)
            received = time.perf_counter()
            etype = observe(message)
            if etype == "error" and tracker.events == 1:
                return  # decided by the caller: recover, retry or relay
            if await send(message):
                added.observe(time.perf_counter() - received)
            if tracker.done:
                return

    async def _finish(
        self,
        sent: RequestSnapshot,
        tracker: TurnTracker,
        account: Account,
        lease: Lease | None,
        sink: ClientSink,
    ) -> None:
        ctx = self.ctx
        metrics = ctx.metrics
        metrics.events.labels(MODE).inc(tracker.events)
        if tracker.ttft_s is not None:
            metrics.ttft.labels(MODE).observe(tracker.ttft_s)
        if sink.gone:
            metrics.drained.inc()
        response_id = tracker.response_id
        if not response_id:
            return
        conn_id = lease.conn_id if lease is not None else None
        if conn_id is not None:
            ctx.conn_remember(conn_id, response_id)
        self.transcript.record(sent, tracker.output, response_id)
        await self._remember(response_id, tracker, account, conn_id)

    async def _remember(
        self, response_id: str, tracker: TurnTracker, account: Account, conn_id: str | None
    ) -> None:
        """The socket's continuation state, then the shared binding in one round trip."""
        self.last_response_id = response_id
        self.last_account_id = account.id
        self.last_conn_id = conn_id
        self.last_pending = dict(tracker.pending)
        with self.ctx.tracing.child("statestore.bind"):
            await self.ctx.store.bind_turn(
                TurnBinding(
                    group=self.group,
                    account_id=account.id,
                    response_id=response_id,
                    session_key=self.session_key,
                    pending_calls=dict(tracker.pending),
                    turn_state=self.turn_state,
                    conn_id=conn_id,
                )
            )

    # -- HTTP fallback and local answers ------------------------------------------
    async def _serve_http(
        self, request: RequestSnapshot, cont: _Continuation, account: Account, sink: ClientSink
    ) -> str:
        full = self.transcript.expand(request)
        if full is None:
            if request.store is True:
                full = request  # the upstream can resolve a stored response over HTTP
            else:
                await self._previous_not_found(sink, request)
                return "previous_response_not_found"
        if request.generate is False:
            tracker = await synthesize_warmup(request, sink)
        else:
            normalized = normalize(
                full,
                ContinuationState(pending_calls=() if full.previous_response_id is None else None),
            ).request
            try:
                with self.ctx.tracing.child("upstream.http", **{"gateway.account": account.id}):
                    tracker = await run_http_turn(
                        self.ctx, account, normalized, sink, self.fwd_headers
                    )
                self.facts.tracker = tracker
            except HttpTurnFailed as exc:
                await self._client_error(sink, exc.status, exc.code, exc.message, exc.error_type)
                return "http_error"
            full = normalized
        if tracker.error is None:
            # HTTP has no upstream socket: the transcript alone carries the conversation.
            self.transcript.record(full, tracker.output, tracker.response_id or "")
            await self._finish_http(tracker, account, sink)
        return "http_" + (tracker.outcome.value if tracker.outcome else "unknown")

    async def _finish_http(self, tracker: TurnTracker, account: Account, sink: ClientSink) -> None:
        if tracker.response_id:
            await self._remember(tracker.response_id, tracker, account, None)

    async def _previous_not_found(self, sink: ClientSink, request: RequestSnapshot) -> None:
        """Ask the client for a full replay: Codex resends everything on a new socket."""
        self.transcript.invalidate()
        prev = request.previous_response_id or self.last_response_id or "unknown"
        await self._client_error(
            sink,
            400,
            "previous_response_not_found",
            f"Previous response with id '{prev}' not found.",
            param="previous_response_id",
        )

    async def _client_error(
        self,
        sink: ClientSink,
        status: int,
        code: str,
        message: str,
        error_type: str = "invalid_request_error",
        param: str | None = None,
    ) -> None:
        self.ctx.metrics.client_errors.labels(code).inc()
        await sink.send(error_event(status, code, message, error_type=error_type, param=param))

    async def on_other_frame(self, frame: str, etype: str, sink: ClientSink) -> None:
        await self._client_error(
            sink,
            400,
            "unsupported_message_type",
            f"unsupported message type {etype!r}; send response.create",
        )

    async def aclose(self) -> None:
        self.transcript.close()
