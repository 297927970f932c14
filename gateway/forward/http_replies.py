"""The JSON answers the gateway itself gives an HTTP turn (never the upstream's words)."""

from __future__ import annotations

from collections.abc import Mapping

from starlette.responses import Response

from gateway.accounts import Scheduler
from gateway.events import error_json


def json_error(
    status: int,
    code: str,
    message: str,
    error_type: str,
    headers: Mapping[str, str] | None = None,
) -> Response:
    return Response(
        error_json(status, code, message, error_type),
        status_code=status,
        media_type="application/json",
        headers=dict(headers or {}),
    )


def rate_limited_response(scheduler: Scheduler, group: str) -> tuple[Response, str]:
    """No account of the group can take the turn: a 429 saying when one frees up, or a 503
    when the group has no account at all; with its error code."""
    if not scheduler.group(group):
        message = "no upstream account for this key's group"
        return json_error(503, "no_account", message, "server_error"), "no_account"
    wait = scheduler.wait_s(group)
    message = f"All upstream accounts are rate-limited; retry after {wait} s."
    headers = {"retry-after": str(wait)}
    code = "rate_limit_exceeded"
    return json_error(429, code, message, "rate_limit_error", headers), code
