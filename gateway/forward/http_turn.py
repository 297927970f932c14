"""``POST /v1/responses`` as a turn: the same decode, continuation, account choice,
normalizer, recovery matrix, failover, binding and telemetry as a WebSocket turn.

Everything that can go wrong is tried again (or moved to another account) before the
first byte goes back to the client; after that the upstream's bytes are relayed as they
come (SSE) or the upstream's JSON body is returned as it is, and only watched on the
way (terminal event, response id, pending calls) so the turn can be bound.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Mapping

import httpx
import msgspec
from opentelemetry import trace
from opentelemetry.trace import Span
from starlette.background import BackgroundTask
from starlette.responses import Response, StreamingResponse

from gateway.accounts import retry_after_s
from gateway.auth import ClientIdentity
from gateway.config import Account
from gateway.context import GatewayContext
from gateway.events import (
    ErrorBody,
    account_error_message,
    is_account_error,
    transport_error_message,
)
from gateway.forward.attempt import AttemptFailed, note_account_health
from gateway.forward.continuation import Continuation, SocketState, resolve_continuation
from gateway.forward.facts import Outcome, TurnFacts, annotate_turn
from gateway.forward.http_fallback import http_headers
from gateway.forward.http_replies import json_error, rate_limited_response
from gateway.forward.sse import SseScanner
from gateway.logs import log_turn
from gateway.recovery import (
    RATE_LIMITS,
    Action,
    Failure,
    RetryPolicy,
    TurnAttempts,
    classify_error_event,
    next_action,
    repair_pairing,
)
from gateway.turn import TurnTracker, UpstreamErrorInfo
from gateway.upstream.headers import forwarded_headers, session_key
from normalizer import (
    ContinuationState,
    PendingCall,
    RequestSnapshot,
    encode_request_bytes,
    normalize,
)
from statestore import TurnBinding

log = logging.getLogger("gateway.http_turn")
MODE = "http"
PASS_RESPONSE_HEADERS = ("x-request-id", "openai-model", "retry-after", "x-codex-turn-state")


class _ErrorEnvelope(msgspec.Struct):
    error: ErrorBody | None = None


def http_body(request: RequestSnapshot) -> bytes:
    """What goes upstream: the request without the WebSocket-only fields."""
    return encode_request_bytes(request.without_fields("type", "generate"))


class HttpTurn:
    def __init__(
        self,
        ctx: GatewayContext,
        identity: ClientIdentity,
        headers: Mapping[str, str],
        request: RequestSnapshot,
    ) -> None:
        self.ctx = ctx
        self.group = identity.group
        self.headers = headers
        self.request = request
        self.session_key = session_key(headers)
        self.fwd_headers = tuple(forwarded_headers(headers))
        self.facts = TurnFacts()
        self.tracker = TurnTracker()
        self.started = time.perf_counter()
        ws = ctx.cfg.openai_ws
        self.policy = RetryPolicy.of(ws)
        self.rng = random.Random()
        self.span: Span = ctx.tracing.open_turn("chat", ctx.tracing.parent_context(headers))
        self.account: Account | None = None
        self.sent: RequestSnapshot = request
        self.bound = False
        self.owner_known = True  # the store said which account owns the previous response
        self.relayed = False  # the client got the upstream's own answer (not the gateway's)

    async def respond(self) -> Response:
        with trace.use_span(self.span, end_on_exit=False):
            try:
                response = await self._respond()
            except BaseException:
                self._close(Outcome.HTTP_ERROR)
                raise
        return response

    async def _respond(self) -> Response:
        ctx = self.ctx
        if self.request.model:
            self.span.set_attribute("gen_ai.request.model", self.request.model)
        with ctx.tracing.child("statestore.lookup"):
            cont = await resolve_continuation(
                ctx.store, self.group, self.session_key, SocketState(), self.request
            )
        account = ctx.scheduler.pick(self.group, prefer=cont.account_id)
        if account is None:
            return self._finish_refused(*self._rate_limited_or_none(), Outcome.NO_ACCOUNT)
        request = self._normalize(cont)
        self.owner_known = cont.account_id is not None
        upstream = await self._attempts(request, account)
        if not isinstance(upstream, httpx.Response):
            return upstream
        self.relayed = True
        out_headers = {
            k: upstream.headers[k] for k in PASS_RESPONSE_HEADERS if k in upstream.headers
        }
        out_headers["x-gateway-instance"] = ctx.instance_id
        media = upstream.headers.get("content-type", "application/json")
        if media.startswith("text/event-stream"):
            return StreamingResponse(
                self._relay(upstream),
                status_code=upstream.status_code,
                headers=out_headers,
                media_type=media,
            )
        body = await upstream.aread()
        await upstream.aclose()
        self.tracker.observe_response(body)
        await self._bind()
        return Response(
            body,
            status_code=upstream.status_code,
            headers=out_headers,
            media_type=media,
            background=BackgroundTask(self._finish),
        )

    def _normalize(self, cont: Continuation) -> RequestSnapshot:
        pending = (
            None
            if cont.pending is None
            else tuple(PendingCall(call_id, kind) for call_id, kind in cont.pending.items())
        )
        anchor = cont.anchor if cont.anchor is not None else self.request.previous_response_id
        # Over HTTP the upstream resolves previous responses itself (stored ones): the id is
        # kept, and the repairs are the same as over a WebSocket.
        state = ContinuationState(last_response_id=anchor, pending_calls=pending)
        result = normalize(self.request, state)
        decision = result.decision
        self.ctx.metrics.normalizer.labels(decision.state.value, decision.reason.value).inc()
        self.facts.normalizer_state = decision.state.value
        self.facts.normalizer_reason = decision.reason.value
        return result.request

    async def _attempts(
        self, request: RequestSnapshot, account: Account
    ) -> httpx.Response | Response:
        ctx = self.ctx
        attempts = TurnAttempts()
        first_failure_at: float | None = None
        while True:
            attempts.attempts += 1
            self.account = account
            self.facts.account_id = account.id
            self.sent = request
            ctx.scheduler.begin(account.id)
            try:
                upstream = await self._post(request, account)
            except AttemptFailed as failed:
                ctx.scheduler.end(account.id)
                note_account_health(self.ctx, account, failed)
                if first_failure_at is None:
                    first_failure_at = time.monotonic()
                elapsed = time.monotonic() - first_failure_at
                step = await self._recover(failed, attempts, account, request, elapsed)
                if isinstance(step, Response):
                    return step
                account, request = step
                continue
            ctx.scheduler.end(account.id)
            ctx.scheduler.succeeded(account.id)
            return upstream

    async def _recover(
        self,
        failed: AttemptFailed,
        attempts: TurnAttempts,
        account: Account,
        request: RequestSnapshot,
        elapsed_s: float,
    ) -> tuple[Account, RequestSnapshot] | Response:
        """Where the next attempt goes and what it sends, or the client's answer."""
        ctx = self.ctx
        owner = self._search_owner(account, attempts, failed)
        if owner is not None:
            return owner, request
        other = self._other_account(account, attempts, request)
        action = next_action(
            failed.failure,
            attempts,
            self.policy,
            elapsed_s=elapsed_s,
            next_backoff_s=self.policy.backoff(attempts.retries + 1, self.rng),
            can_align=False,
            has_transcript=False,
            recovery_enabled=ctx.cfg.openai_ws.recovery_enabled,
            can_failover=other is not None,
        )
        attempts.tried.add(action)
        log.info(
            "http turn attempt failed",
            extra={
                "event": "turn_attempt_failed",
                "failure": failed.failure.value,
                "action": action.value,
                "account_id": account.id,
                "attempt": attempts.attempts,
                "detail": failed.detail[:160],
            },
        )
        if action is Action.RETRY:
            attempts.retries += 1
            self.facts.retries = attempts.retries
            ctx.metrics.retry_attempts.labels(failed.failure.value).inc()
            await asyncio.sleep(self.policy.backoff(attempts.retries, self.rng))
            return account, request
        if action is Action.FAILOVER and other is not None:
            attempts.accounts.add(account.id)
            self.facts.failovers += 1
            ctx.metrics.failovers.labels(failed.failure.value).inc()
            return other, request
        if action in (Action.DROP_ORPHAN_OUTPUT, Action.ABORT_MISSING_OUTPUT):
            repaired = repair_pairing(request, failed.error) if failed.error else None
            if repaired is not None:
                attempts.repairs += 1
                self.facts.recovery = action.value
                ctx.metrics.recoveries.labels(action.value, "attempted").inc()
                return account, repaired
        return self._give_up(failed, attempts, account)

    def _search_owner(
        self, account: Account, attempts: TurnAttempts, failed: AttemptFailed
    ) -> Account | None:
        """The previous response was not found where we looked, and nothing told us which
        account owns it (its binding had not reached the store, or the store was down):
        it was stored by one of the group's accounts, so ask the next one."""
        if failed.failure is not Failure.PREVIOUS_NOT_FOUND or self.owner_known:
            return None
        attempts.accounts.add(account.id)
        other = self.ctx.scheduler.pick(self.group, exclude=attempts.accounts)
        if other is not None:
            self.ctx.metrics.recoveries.labels("owner_search", "attempted").inc()
        return other

    def _other_account(
        self, account: Account, attempts: TurnAttempts, request: RequestSnapshot
    ) -> Account | None:
        if request.previous_response_id is not None:
            return None  # only the account that owns the previous response can continue it
        tried = {*attempts.accounts, account.id}
        return self.ctx.scheduler.pick(self.group, exclude=tried)

    async def _post(self, request: RequestSnapshot, account: Account) -> httpx.Response:
        """One POST upstream; a refusal or a transport failure is an AttemptFailed."""
        client = self.ctx.http.get(account.proxy_url)
        headers = [(k, v) for k, v in http_headers(account, self.fwd_headers) if k != "accept"]
        headers.append(("accept", self.headers.get("accept", "*/*")))
        url = account.base_url.rstrip("/") + "/responses"
        body = http_body(request)
        try:
            with self.ctx.tracing.child("upstream.http", **{"gateway.account": account.id}):
                upstream = await client.send(
                    client.build_request("POST", url, content=body, headers=headers),
                    stream=True,
                )
        except httpx.HTTPError as exc:
            raise AttemptFailed(Failure.DIAL, detail=repr(exc)) from None
        if upstream.status_code < 400:
            return upstream
        raw = await upstream.aread()
        await upstream.aclose()
        try:
            err = msgspec.json.decode(raw, type=_ErrorEnvelope).error
        except (msgspec.MsgspecError, RecursionError):
            err = None
        info = UpstreamErrorInfo(
            status=upstream.status_code,
            code=err.code if err else None,
            message=(err.message or "") if err else "",
            frame=raw,
            headers=dict(upstream.headers),
        )
        raise AttemptFailed(
            classify_error_event(info),
            error=info,
            detail=f"HTTP {upstream.status_code}",
            retry_after_s=retry_after_s(info.headers, info.message),
        )

    def _give_up(self, failed: AttemptFailed, attempts: TurnAttempts, account: Account) -> Response:
        ctx = self.ctx
        failure = failed.failure
        error = failed.error
        if failure in RATE_LIMITS:
            return self._finish_refused(*self._rate_limited_or_none(), Outcome.RATE_LIMITED)
        if error is not None and (
            failure is Failure.ACCOUNT_REFUSED or is_account_error(error.status, error.code)
        ):
            # The upstream's words about an account may quote its key: log, never relay.
            log.warning(
                "upstream refused the account over HTTP",
                extra={"event": "upstream_account_error", "account": account.id},
            )
            message = account_error_message(account.id, error.status, error.code)
            refused = json_error(502, "upstream_account_error", message, "server_error")
            return self._finish_refused(refused, "upstream_account_error", Outcome.UPSTREAM_ERROR)
        if error is not None and failure not in (Failure.ERROR_TRANSIENT,):
            # The upstream rejected the request itself: the client gets its answer as it is.
            status = error.status or 400
            body = error.frame if isinstance(error.frame, bytes) else error.frame.encode()
            relayed = Response(body, status_code=status, media_type="application/json")
            self.relayed = True
            code = error.code or "upstream_error"
            return self._finish_refused(relayed, code, Outcome.UPSTREAM_ERROR)
        ctx.metrics.retry_exhausted.inc()
        message = transport_error_message("HTTP upstream") + f" ({attempts.attempts} attempts)"
        exhausted = json_error(503, "upstream_unavailable", message, "server_error")
        return self._finish_refused(exhausted, "upstream_unavailable", Outcome.RETRY_EXHAUSTED)

    def _rate_limited_or_none(self) -> tuple[Response, str]:
        return rate_limited_response(self.ctx.scheduler, self.group)

    async def _relay(self, upstream: httpx.Response) -> AsyncIterator[bytes]:
        scanner = SseScanner()
        observe = self.tracker.observe
        tracker = self.tracker
        try:
            async for chunk in upstream.aiter_raw():
                for data in scanner.feed(chunk):
                    observe(data)
                if tracker.done and not self.bound:
                    # An HTTP client has no socket state: its next request may go to any
                    # instance, so the binding lands before the terminal event leaves.
                    await self._bind()
                yield chunk
            for data in scanner.close():
                observe(data)
        finally:
            await upstream.aclose()
            await self._finish()

    # -- endings ------------------------------------------------------------------------
    def _finish_refused(self, response: Response, code: str, outcome: Outcome) -> Response:
        self.ctx.metrics.client_errors.labels(code).inc()
        self._close(outcome)
        return response

    async def _finish(self) -> None:
        tracker = self.tracker
        self.facts.tracker = tracker
        outcome = Outcome.of(tracker.outcome, http=True)
        metrics = self.ctx.metrics
        metrics.events.labels(MODE).inc(tracker.events)
        if tracker.ttft_s is not None:
            metrics.ttft.labels(MODE).observe(tracker.ttft_s)
        await self._bind()
        self._close(outcome)

    async def _bind(self) -> None:
        tracker, account = self.tracker, self.account
        if self.bound or not tracker.response_id or account is None or tracker.error:
            return
        self.bound = True
        binding = TurnBinding(
            group=self.group,
            account_id=account.id,
            response_id=tracker.response_id,
            session_key=self.session_key,
            pending_calls=dict(tracker.pending),
            stored=self.sent.store is True,
        )
        with trace.use_span(self.span, end_on_exit=False):
            with self.ctx.tracing.child("statestore.bind"):
                await self.ctx.store.bind_turn(binding)

    def _close(self, outcome: Outcome) -> None:
        self.ctx.metrics.turns.labels(MODE, outcome.value).inc()
        log_turn(MODE, outcome.value, self.facts, self.started, None)
        span = self.span
        if span.is_recording():
            annotate_turn(
                span,
                self.facts,
                outcome,
                instance=self.ctx.instance_id,
                group=self.group,
                mode=MODE,
            )
            span.set_attribute("gateway.transport", "http")
        self.ctx.tracing.close_turn(span, "chat")
