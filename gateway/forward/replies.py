"""The error events the gateway itself sends to a client, each counted once by code."""

from __future__ import annotations

from gateway.context import GatewayContext
from gateway.events import error_event
from gateway.forward.facts import Outcome
from gateway.session import ClientSink

INTERRUPTED = "upstream_stream_interrupted"


class Replies:
    def __init__(self, ctx: GatewayContext, group: str) -> None:
        self.ctx = ctx
        self.group = group

    async def client_error(
        self,
        sink: ClientSink,
        outcome: Outcome,
        status: int,
        message: str,
        error_type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
    ) -> Outcome:
        code = code or outcome.value
        self.ctx.metrics.client_errors.labels(code).inc()
        await sink.send(error_event(status, code, message, error_type=error_type, param=param))
        return outcome

    async def previous_not_found(self, sink: ClientSink, previous_response_id: str) -> Outcome:
        """The error that makes Codex resend the whole history on a new socket."""
        return await self.client_error(
            sink,
            Outcome.PREVIOUS_NOT_FOUND,
            400,
            f"Previous response with id '{previous_response_id}' not found.",
            code="previous_response_not_found",
            param="previous_response_id",
        )

    async def rate_limited(self, sink: ClientSink) -> Outcome:
        """Every account of the group is cooling down: say when one frees up (a 429 with
        retry-after, which Codex waits out and retries)."""
        wait = self.ctx.scheduler.wait_s(self.group)
        message = (
            f"All upstream accounts are rate-limited; retry after {wait} s "
            "(the earliest an account frees up)."
        )
        self.ctx.metrics.client_errors.labels("rate_limit_exceeded").inc()
        await sink.send(
            error_event(
                429,
                "rate_limit_exceeded",
                message,
                error_type="rate_limit_error",
                headers={"retry-after": str(wait)},
            )
        )
        return Outcome.RATE_LIMITED

    async def no_account(self, sink: ClientSink) -> Outcome:
        if self.ctx.scheduler.group(self.group):
            return await self.rate_limited(sink)
        message = "no upstream account is configured for this key's group"
        return await self.client_error(
            sink, Outcome.NO_ACCOUNT, 503, message, "server_error", code="no_account"
        )
