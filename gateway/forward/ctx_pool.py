"""ctx_pool mode: a pooled upstream socket per turn, the normalizer before every write,
continuation on any instance, recovery, account failover and transparent HTTP fallback.

A turn goes one way: decode → continuation → account → plan → attempt (normalize once,
write, relay) → finish (socket state, transcript, queued binding). A failure before the
first event reached the client goes to ``recovery.next_action``; each action has one
small handler (``gateway.forward.recover``) that returns the next ``Plan`` (or ends the
turn), so recovery never re-enters the middle of an attempt.
"""

from __future__ import annotations

import logging
import random
import secrets
import time
import uuid
from collections.abc import Mapping

import msgspec
from opentelemetry import trace

from gateway.auth import ClientIdentity
from gateway.config import Account
from gateway.context import GatewayContext
from gateway.forward.attempt import (
    MODE,
    AttemptFailed,
    Delivered,
    Plan,
    WsAttempt,
    note_account_health,
)
from gateway.forward.binder import BindWriter
from gateway.forward.continuation import (
    Continuation,
    SocketState,
    local_continuation,
    resolve_continuation,
)
from gateway.forward.durable import DurableTranscript
from gateway.forward.facts import Outcome, TurnFacts, annotate_turn
from gateway.forward.http_fallback import HttpTurnFailed, run_http_turn, synthesize_warmup
from gateway.forward.recover import RecoveryHandlers
from gateway.forward.replies import INTERRUPTED, Replies
from gateway.logs import log_turn
from gateway.recovery import (
    Failure,
    RetryPolicy,
    TurnAttempts,
)
from gateway.session import ClientSink
from gateway.transcript import Transcript
from gateway.turn import TurnTracker
from gateway.upstream.headers import forwarded_headers
from normalizer import ContinuationState, normalize
from normalizer.snapshot import RequestDecodeError, RequestSnapshot, decode_request
from statestore import TurnBinding

log = logging.getLogger("gateway.ctx_pool")


class CtxPoolForwarder(RecoveryHandlers):
    def __init__(
        self,
        ctx: GatewayContext,
        identity: ClientIdentity,
        headers: Mapping[str, str],
        session_key: str | None,
    ) -> None:
        self.ctx = ctx
        self.group = identity.group
        self.session_key = session_key or f"sock:{ctx.instance_id}:{uuid.uuid4().hex}"
        self.fwd_headers = tuple(forwarded_headers(headers))
        self.turn_state: str | None = headers.get("x-codex-turn-state")
        self.state = SocketState()  # the fast path for the next turn on this socket
        ws = ctx.cfg.openai_ws
        self.transcript = Transcript(ctx.transcripts, ws.transcript_max_bytes_per_socket)
        self.policy = RetryPolicy.of(ws)
        self.rng = random.Random()
        self.trace_parent = ctx.tracing.parent_context(headers)
        self.facts = TurnFacts()
        self.attempt = WsAttempt(ctx, self.transcript, self.fwd_headers)
        self.durable = DurableTranscript(ctx, self.group, session_key, self.transcript)
        self.replies = Replies(ctx, self.group)
        registry = ctx.registry
        self.binder = BindWriter(
            ctx.store,
            tracing=ctx.tracing,
            on_busy=registry.turn_started,
            on_idle=registry.turn_finished,
            on_failed=lambda _binding: self.durable.write_failed(),
        )

    @property
    def last_conn_id(self) -> str | None:
        return self.state.conn_id

    async def handshake_turn_state(self) -> str | None:
        """Echo the client's token, else the session's stored one, else mint one."""
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
            facts.drained = sink.gone
            self.ctx.metrics.turns.labels(MODE, outcome.value).inc()
            log_turn(MODE, outcome.value, facts, started, self.last_conn_id)
            if span.is_recording():
                annotate_turn(
                    span,
                    facts,
                    outcome,
                    instance=self.ctx.instance_id,
                    group=self.group,
                    mode=MODE,
                )

    async def _run_turn(self, frame: str, sink: ClientSink) -> Outcome:
        try:
            request = decode_request(frame)
        except RequestDecodeError as exc:
            return await self.replies.client_error(sink, Outcome.INVALID_REQUEST, 400, str(exc))
        if request.type != "response.create":
            message = f"unsupported message type {request.type!r}"
            return await self.replies.client_error(
                sink, Outcome.INVALID_REQUEST, 400, message, code="unsupported_message_type"
            )
        if request.model and self.ctx.tracing.enabled:
            trace.get_current_span().set_attribute("gen_ai.request.model", request.model)
        cont = local_continuation(self.state, request)
        if cont is None:  # a new socket, or another socket's response: ask the store
            with self.ctx.tracing.child("statestore.lookup"):
                cont = await resolve_continuation(
                    self.ctx.store, self.group, self.session_key, self.state, request
                )
        if self._socket_lost_it(request, cont):
            # Another instance served this conversation (a restart, a deploy): rebuild it
            # from the durable transcript before anything goes upstream.
            await self.durable.rebuild(cont.anchor or "")
        account = self.ctx.scheduler.pick(
            self.group, prefer=cont.account_id, usable=self.ctx.ws_capable
        )
        if account is None:
            return await self.replies.no_account(sink)
        return await self._serve(Plan(request, cont, account), sink)

    def _socket_lost_it(self, request: RequestSnapshot, cont: Continuation) -> bool:
        """A store:false continuation that no upstream socket of this process holds and
        this client socket has no transcript for."""
        anchor = cont.anchor
        return (
            anchor is not None
            and request.previous_response_id is not None
            and request.store is not True
            and not cont.stored
            and cont.conn_id is None
            and not self.transcript.covers(anchor)
        )

    async def _rebuilt(self, plan: Plan) -> bool:
        anchor = plan.cont.anchor or plan.request.previous_response_id
        if anchor is None or self.transcript.covers(anchor):
            return False
        return await self.durable.rebuild(anchor)

    async def _serve(self, plan: Plan, sink: ClientSink) -> Outcome:
        ctx = self.ctx
        attempts = TurnAttempts()
        first_failure_at: float | None = None  # the retry budget runs from the first failure
        while True:
            resolution = ctx.resolution(plan.account)
            if resolution.transport == "http":
                ctx.metrics.fallbacks.labels(resolution.reason).inc()
                self.facts.fallback = resolution.reason
                return await self._serve_http(plan, sink)
            attempts.attempts += 1
            self.facts.account_id = plan.account.id
            ctx.scheduler.begin(plan.account.id)
            try:
                done = await self.attempt.run(plan, sink, self.facts)
            except AttemptFailed as exc:
                failed = exc
            else:
                ctx.scheduler.succeeded(plan.account.id)
                if done is Outcome.PREVIOUS_NOT_FOUND and await self._rebuilt(plan):
                    plan = msgspec.structs.replace(plan, replay=True, fresh_socket=True)
                    continue
                return await self._delivered(done, plan, sink)
            finally:
                ctx.scheduler.end(plan.account.id)
            if failed.after_events:
                message = "upstream connection lost mid-response; the response is incomplete"
                return await self.replies.client_error(
                    sink, Outcome.INTERRUPTED, 502, message, "server_error", code=INTERRUPTED
                )
            if sink.gone:
                return Outcome.CLIENT_GONE
            note_account_health(self.ctx, plan.account, failed)
            if first_failure_at is None:
                first_failure_at = time.monotonic()
            owner = self._search_owner(plan, failed, attempts)
            if owner is not None:
                plan = owner
                continue
            if failed.failure in (Failure.PREVIOUS_NOT_FOUND, Failure.TOOL_OUTPUT_MISSING):
                await self._rebuilt(plan)  # a replay needs the transcript; it may be stored
            action = self._decide(plan, failed, attempts, time.monotonic() - first_failure_at)
            step = await self.handle(action, plan, failed, attempts, sink)
            if isinstance(step, Outcome):
                return step
            plan = step

    # -- endings ------------------------------------------------------------------------
    async def _delivered(self, done: Delivered | Outcome, plan: Plan, sink: ClientSink) -> Outcome:
        if isinstance(done, Outcome):
            if done is Outcome.PREVIOUS_NOT_FOUND:
                return await self._previous_not_found(sink, plan.request)
            return done
        self._finish(done.sent, done.tracker, plan.account, done.conn, sink)
        return Outcome.of(done.tracker.outcome)

    def _finish(
        self,
        sent: RequestSnapshot,
        tracker: TurnTracker,
        account: Account,
        conn: object | None,
        sink: ClientSink,
    ) -> None:
        """Record what the turn left behind. Synchronous: the client may already have sent
        its next request, which must find this socket's state updated."""
        ctx = self.ctx
        metrics = ctx.metrics
        mode = MODE
        metrics.events.labels(mode).inc(tracker.events)
        if tracker.ttft_s is not None:
            metrics.ttft.labels(mode).observe(tracker.ttft_s)
        if sink.gone:
            metrics.drained.inc()
        response_id = tracker.response_id
        if not response_id:
            return
        if conn is not None:
            ctx.conn_remember(conn, response_id)
        self.transcript.record(sent, tracker.output, response_id)
        conn_id = getattr(conn, "conn_id", None)
        pending = dict(tracker.pending)
        self.state = SocketState(response_id, account.id, conn_id, pending, sent.store is True)
        delta, drop = self.durable.delta(sent, tracker.output, response_id)
        self.binder.submit(
            TurnBinding(
                group=self.group,
                account_id=account.id,
                response_id=response_id,
                session_key=self.session_key,
                pending_calls=pending,
                turn_state=self.turn_state,
                conn_id=conn_id,
                stored=sent.store is True,
                transcript=delta,
                drop_transcript=drop,
            )
        )

    async def _serve_http(self, plan: Plan, sink: ClientSink) -> Outcome:
        request, account = plan.request, plan.account
        full = self.transcript.expand(request)
        if full is None:
            if request.store is not True:
                return await self._previous_not_found(sink, request)
            full = request  # the upstream can resolve a stored response over HTTP
        if request.generate is False:
            tracker = await synthesize_warmup(request, sink)
        else:
            pending = () if full.previous_response_id is None else None
            full = normalize(full, ContinuationState(pending_calls=pending)).request
            try:
                with self.ctx.tracing.child("upstream.http", **{"gateway.account": account.id}):
                    tracker = await run_http_turn(self.ctx, account, full, sink, self.fwd_headers)
                self.facts.tracker = tracker
            except HttpTurnFailed as exc:
                await self.replies.client_error(
                    sink, Outcome.HTTP_ERROR, exc.status, exc.message, exc.error_type, exc.code
                )
                return Outcome.HTTP_ERROR
        if tracker.error is None:
            # HTTP has no upstream socket: the transcript alone carries the conversation.
            self._finish(full, tracker, account, None, sink)
        return Outcome.of(tracker.outcome, http=True)

    async def _previous_not_found(self, sink: ClientSink, request: RequestSnapshot) -> Outcome:
        """Ask the client for a full replay: Codex resends everything on a new socket."""
        self.transcript.invalidate()
        prev = request.previous_response_id or self.state.response_id or "unknown"
        return await self.replies.previous_not_found(sink, prev)

    async def on_other_frame(self, frame: str, etype: str, sink: ClientSink) -> None:
        message = f"unsupported message type {etype!r}; send response.create"
        await self.replies.client_error(
            sink, Outcome.INVALID_REQUEST, 400, message, code="unsupported_message_type"
        )

    async def aclose(self) -> None:
        try:
            await self.binder.flush()
            await self.durable.write_on_close(self.binder)  # needs the transcript: first
        finally:
            self.transcript.close()
