"""The recovery handlers of a ctx_pool turn: one small method per ``recovery.Action``.

Each takes the plan that failed and returns the next ``Plan`` (the loop tries again) or
the turn's ``Outcome`` (the loop ends). They never re-enter an attempt halfway.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

import msgspec

from gateway.config import Account
from gateway.context import GatewayContext
from gateway.events import sanitize_upstream_error
from gateway.forward.attempt import AttemptFailed, Plan
from gateway.forward.facts import Outcome, TurnFacts
from gateway.forward.replies import Replies
from gateway.recovery import (
    RATE_LIMITS,
    Action,
    Failure,
    RetryPolicy,
    TurnAttempts,
    next_action,
    repair_pairing,
)
from gateway.session import ClientSink
from gateway.transcript import Transcript
from normalizer import RequestSnapshot

log = logging.getLogger("gateway.ctx_pool")

_Handler = Callable[
    ["RecoveryHandlers", Plan, AttemptFailed, TurnAttempts, ClientSink],
    Awaitable["Plan | Outcome"],
]


class RecoveryHandlers:
    """Mixed into the forwarder, which provides these attributes and the two endings."""

    ctx: GatewayContext
    group: str
    facts: TurnFacts
    policy: RetryPolicy
    rng: random.Random
    transcript: Transcript
    replies: Replies

    async def _serve_http(self, plan: Plan, sink: ClientSink) -> Outcome:
        raise NotImplementedError

    async def _previous_not_found(self, sink: ClientSink, request: RequestSnapshot) -> Outcome:
        raise NotImplementedError

    async def handle(
        self,
        action: Action,
        plan: Plan,
        failed: AttemptFailed,
        attempts: TurnAttempts,
        sink: ClientSink,
    ) -> Plan | Outcome:
        return await _HANDLERS[action](self, plan, failed, attempts, sink)

    def _search_owner(
        self, plan: Plan, failed: AttemptFailed, attempts: TurnAttempts
    ) -> Plan | None:
        """A stored previous response not found on an account nothing said owns it (its
        binding had not reached the store, or the store was down): one of the group's
        accounts stored it, so the same request goes to the next one."""
        request = plan.request
        if (
            failed.failure is not Failure.PREVIOUS_NOT_FOUND
            or request.store is not True
            or request.previous_response_id is None
            or plan.cont.account_id is not None
        ):
            return None
        attempts.accounts.add(plan.account.id)
        other = self.ctx.scheduler.pick(
            self.group, exclude=attempts.accounts, usable=self.ctx.ws_capable
        )
        if other is None:
            return None
        self.ctx.metrics.recoveries.labels("owner_search", "attempted").inc()
        return msgspec.structs.replace(plan, account=other, fresh_socket=True)

    def _decide(
        self, plan: Plan, failed: AttemptFailed, attempts: TurnAttempts, elapsed_s: float
    ) -> Action:
        request, cont = plan.request, plan.cont
        failure = failed.failure
        action = next_action(
            failure,
            attempts,
            self.policy,
            elapsed_s=elapsed_s,
            next_backoff_s=self.policy.backoff(attempts.retries + 1, self.rng),
            can_align=bool(
                cont.session_last
                and request.previous_response_id
                and cont.session_last != request.previous_response_id
            ),
            has_transcript=self.transcript.covers(request.previous_response_id)
            or (request.previous_response_id is None and failure is Failure.TOOL_OUTPUT_MISSING),
            recovery_enabled=self.ctx.cfg.openai_ws.recovery_enabled,
            can_failover=self._other_account(plan, attempts) is not None,
        )
        attempts.tried.add(action)
        if action is not Action.RETRY:
            self.facts.recovery = action.value
        log.info(
            "turn attempt failed",
            extra={
                "event": "turn_attempt_failed",
                "failure": failure.value,
                "action": action.value,
                "account_id": plan.account.id,
                "attempt": attempts.attempts,
                "detail": failed.detail[:160],
            },
        )
        return action

    def _other_account(self, plan: Plan, attempts: TurnAttempts) -> Account | None:
        tried = {*attempts.accounts, plan.account.id}
        return self.ctx.scheduler.pick(self.group, exclude=tried, usable=self.ctx.ws_capable)

    # -- recovery handlers: each returns the next plan, or ends the turn ----------------
    async def _retry(
        self, plan: Plan, failed: AttemptFailed, attempts: TurnAttempts, sink: ClientSink
    ) -> Plan | Outcome:
        attempts.retries += 1
        self.facts.retries = attempts.retries
        self.ctx.metrics.retry_attempts.labels(failed.failure.value).inc()
        await asyncio.sleep(self.policy.backoff(attempts.retries, self.rng))
        if self.ctx.scheduler.available(plan.account.id):
            return plan
        # Enough transport failures in a row opened the account: go elsewhere if we can.
        moved = self._move(plan, attempts, "account_open")
        return plan if moved is None else moved

    async def _align(
        self, plan: Plan, failed: AttemptFailed, attempts: TurnAttempts, sink: ClientSink
    ) -> Plan | Outcome:
        cont = plan.cont
        assert cont.session_last is not None
        self.ctx.metrics.recoveries.labels("previous_response_not_found_align", "attempted").inc()
        request = plan.request.with_previous_response_id(cont.session_last)
        return msgspec.structs.replace(plan, request=request, cont=cont.aligned())

    async def _replay(
        self, plan: Plan, failed: AttemptFailed, attempts: TurnAttempts, sink: ClientSink
    ) -> Plan | Outcome:
        attempts.replayed.add(failed.failure)
        self.ctx.metrics.recoveries.labels(failed.failure.value + "_replay", "attempted").inc()
        return msgspec.structs.replace(plan, replay=True, fresh_socket=True)

    async def _repair(
        self, plan: Plan, failed: AttemptFailed, attempts: TurnAttempts, sink: ClientSink
    ) -> Plan | Outcome:
        action = Action.DROP_ORPHAN_OUTPUT
        if failed.failure is Failure.TOOL_OUTPUT_MISSING:
            action = Action.ABORT_MISSING_OUTPUT
        repaired = repair_pairing(plan.request, failed.error) if failed.error else None
        if repaired is None:
            return await self._relay_error(plan, failed, attempts, sink)
        attempts.repairs += 1
        self.ctx.metrics.recoveries.labels(action.value, "attempted").inc()
        return msgspec.structs.replace(plan, request=repaired)

    async def _failover(
        self, plan: Plan, failed: AttemptFailed, attempts: TurnAttempts, sink: ClientSink
    ) -> Plan | Outcome:
        moved = self._move(plan, attempts, failed.failure.value)
        if moved is None:
            return await self._fail(plan, failed, attempts, sink)
        return moved

    def _move(self, plan: Plan, attempts: TurnAttempts, reason: str) -> Plan | None:
        """The plan on another available account of the group, or None. The new account
        cannot see this conversation's previous response: it gets the whole of it."""
        other = self._other_account(plan, attempts)
        if other is None:
            return None
        attempts.accounts.add(plan.account.id)
        self.facts.failovers += 1
        self.ctx.metrics.failovers.labels(reason).inc()
        continues = plan.cont.anchor is not None or plan.request.previous_response_id is not None
        return msgspec.structs.replace(
            plan,
            account=other,
            cont=plan.cont.elsewhere(other.id),
            fresh_socket=True,
            replay=continues,
        )

    async def _fallback_http(
        self, plan: Plan, failed: AttemptFailed, attempts: TurnAttempts, sink: ClientSink
    ) -> Plan | Outcome:
        self.ctx.start_cooldown(plan.account.id)
        self.facts.fallback = failed.failure.value
        self.ctx.metrics.fallbacks.labels(failed.failure.value).inc()
        return await self._serve_http(plan, sink)

    async def _relay_error(
        self, plan: Plan, failed: AttemptFailed, attempts: TurnAttempts, sink: ClientSink
    ) -> Plan | Outcome:
        error = failed.error
        if error is None:
            return await self._fail(plan, failed, attempts, sink)
        # The upstream's words about an account may quote its key: never to the client.
        await sink.send(sanitize_upstream_error(error.frame, "error", plan.account.id))
        self.ctx.metrics.client_errors.labels(error.code or "upstream_error").inc()
        return Outcome.UPSTREAM_ERROR

    async def _fail(
        self, plan: Plan, failed: AttemptFailed, attempts: TurnAttempts, sink: ClientSink
    ) -> Plan | Outcome:
        failure = failed.failure
        if failure in (Failure.PREVIOUS_NOT_FOUND, Failure.TOOL_OUTPUT_MISSING):
            self.ctx.metrics.recoveries.labels(failure.value, "client_replay").inc()
            return await self._previous_not_found(sink, plan.request)
        if failure is Failure.POOL_EXHAUSTED:
            message = "all upstream sockets for this account are busy; retry shortly"
            return await self.replies.client_error(
                sink, Outcome.POOL_EXHAUSTED, 503, message, "server_error", code="pool_exhausted"
            )
        if failure in RATE_LIMITS:
            return await self.replies.rate_limited(sink)
        self.ctx.metrics.retry_exhausted.inc()
        message = f"upstream unavailable after {attempts.attempts} attempt(s): {failure.value}"
        return await self.replies.client_error(
            sink, Outcome.RETRY_EXHAUSTED, 503, message, "server_error", code="upstream_unavailable"
        )


_HANDLERS: dict[Action, _Handler] = {
    Action.RETRY: RecoveryHandlers._retry,
    Action.ALIGN: RecoveryHandlers._align,
    Action.REPLAY: RecoveryHandlers._replay,
    Action.DROP_ORPHAN_OUTPUT: RecoveryHandlers._repair,
    Action.ABORT_MISSING_OUTPUT: RecoveryHandlers._repair,
    Action.FAILOVER: RecoveryHandlers._failover,
    Action.FALLBACK_HTTP: RecoveryHandlers._fallback_http,
    Action.RELAY_ERROR: RecoveryHandlers._relay_error,
    Action.FAIL: RecoveryHandlers._fail,
}
