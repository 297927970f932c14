"""GET /admin/accounts: read-only account health behind its own key."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from gateway.app import build_app
from gateway.config import ConfigError, parse_config

UPSTREAM_SECRET = "sk-upstream-secret-123"
CONFIG = f"""
[server]
instance_id = "gw-admin"
{{admin}}

[[clients]]
key = "sk-client"
group = "g"

[[accounts]]
id = "a"
group = "g"
api_key = "{UPSTREAM_SECRET}"
extra_headers = {{{{ "OpenAI-Organization" = "org-secret" }}}}

[[accounts]]
id = "b"
group = "g"
api_key = "{UPSTREAM_SECRET}"
"""


@asynccontextmanager
async def admin_client(admin: str) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    cfg = parse_config(CONFIG.format(admin=admin), env={"ADMIN_KEY": "adm-from-env"})
    app = build_app(cfg)
    ctx = app.state.gateway.ctx
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            yield client, ctx
    finally:
        await ctx.aclose()


async def test_accounts_with_state_deadline_in_flight_and_pool_and_no_secret() -> None:
    async with admin_client('admin_key = "adm-1"') as (client, ctx):
        ctx.scheduler.rate_limited("a", 30.0)
        ctx.scheduler.begin("b")
        reply = await client.get("/admin/accounts", headers={"Authorization": "Bearer adm-1"})
        assert reply.status_code == 200
        assert reply.headers["cache-control"] == "no-store"
        body = reply.json()
        assert body["instance"] == "gw-admin"
        a, b = body["accounts"]
        assert (a["id"], a["group"], a["state"], a["in_flight"]) == ("a", "g", "cooling", 0)
        assert 29.0 < a["until"] <= 30.0
        assert (b["id"], b["state"], b["until"], b["in_flight"]) == ("b", "healthy", None, 1)
        assert a["pool"] == {"idle": 0, "leased": 0, "dials": 0}
        for secret in (UPSTREAM_SECRET, "org-secret", "sk-client", "adm-1"):
            assert secret not in reply.text


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer sk-client", "Bearer adm-2", "Basic adm-1", "Bearer "],
)
async def test_anything_but_the_admin_key_is_401(authorization: str | None) -> None:
    async with admin_client('admin_key = "adm-1"') as (client, _):
        headers = {} if authorization is None else {"Authorization": authorization}
        reply = await client.get("/admin/accounts", headers=headers)
        assert reply.status_code == 401
        assert reply.json()["error"]["code"] == "invalid_admin_key"
        assert "accounts" not in reply.json()


async def test_without_an_admin_key_the_endpoint_does_not_exist() -> None:
    async with admin_client("") as (client, _):
        for authorization in ("Bearer sk-client", "Bearer "):
            reply = await client.get("/admin/accounts", headers={"Authorization": authorization})
            assert reply.status_code == 404


async def test_the_admin_key_can_come_from_the_environment() -> None:
    async with admin_client('admin_key_env = "ADMIN_KEY"') as (client, ctx):
        assert ctx.cfg.server.admin_key_env == ""  # resolved once, at load time
        auth = {"Authorization": "Bearer adm-from-env"}
        assert (await client.get("/admin/accounts", headers=auth)).status_code == 200


def test_an_admin_key_equal_to_a_client_key_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"server\.admin_key: must differ"):
        parse_config(CONFIG.format(admin='admin_key = "sk-client"'), env={})
