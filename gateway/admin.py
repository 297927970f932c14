"""Read-only operator endpoints, behind their own key (never a client key).

``GET /admin/accounts``: every upstream account with its group, health state, seconds
until a cooling or open account may be used again, turns in flight and its pool. No
secret (API key, headers, base URL credentials) ever appears. With no admin key
configured the endpoint does not exist (404).
"""

from __future__ import annotations

import hmac
import time

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from gateway.context import GatewayContext
from gateway.events import error_json


class PoolView(msgspec.Struct, kw_only=True):
    idle: int
    leased: int
    dials: int


class AccountView(msgspec.Struct, kw_only=True):
    id: str
    group: str
    state: str
    until: float | None  # seconds from now; None: available now
    in_flight: int
    pool: PoolView


class AccountsView(msgspec.Struct, kw_only=True):
    instance: str
    accounts: list[AccountView]


_encode = msgspec.json.Encoder().encode


def _error(status: int, code: str, message: str) -> Response:
    return Response(
        error_json(status, code, message, "invalid_request_error"),
        status_code=status,
        media_type="application/json",
    )


def admin_authorized(admin_key: str, authorization: str | None) -> bool:
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return False
    return hmac.compare_digest(token.strip().encode(), admin_key.encode())


def accounts_view(ctx: GatewayContext) -> AccountsView:
    scheduler = ctx.scheduler
    pools = ctx.pools.stats()
    now = time.monotonic()
    views: list[AccountView] = []
    for account in ctx.cfg.accounts:
        until = scheduler.until(account.id)
        stats = pools.get(account.id)
        views.append(
            AccountView(
                id=account.id,
                group=account.group,
                state=scheduler.state(account.id).value,
                until=None if until is None else round(max(0.0, until - now), 3),
                in_flight=scheduler.active.get(account.id, 0),
                pool=PoolView(
                    idle=stats.idle if stats else 0,
                    leased=stats.leased if stats else 0,
                    dials=stats.dials if stats else 0,
                ),
            )
        )
    return AccountsView(instance=ctx.instance_id, accounts=views)


async def admin_accounts(ctx: GatewayContext, request: Request) -> Response:
    admin_key = ctx.cfg.server.admin_key
    if not admin_key:
        return _error(404, "not_found", "Not Found")
    if not admin_authorized(admin_key, request.headers.get("authorization")):
        return _error(401, "invalid_admin_key", "this endpoint needs the admin key")
    return Response(
        _encode(accounts_view(ctx)),
        media_type="application/json",
        headers={"cache-control": "no-store"},
    )
