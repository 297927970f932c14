"""gateway.resolver: WebSocket or HTTP per account and request, first matching rule wins."""

from __future__ import annotations

from typing import Any, cast

import pytest

from gateway.config import Account, OpenAIWSConfig
from gateway.resolver import BETA_V1, BETA_V2, resolve


def acct(**kw: Any) -> Account:
    return Account(id="a", **kw)


def ws(**kw: Any) -> OpenAIWSConfig:
    return OpenAIWSConfig(**kw)


class ExplodingWS:
    """Any attribute read fails: proves a branch never looks at the WS switches."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"resolver read openai_ws.{name}")


def test_beta_header_values_match_the_protocol() -> None:
    assert BETA_V1 == "responses_websockets=2026-02-04"
    assert BETA_V2 == "responses_websockets=2026-02-06"


@pytest.mark.parametrize("auth", ["bedrock", "", "APIKEY", "azure", "cookie"])
def test_unknown_auth_is_http_without_reading_ws_switches(auth: str) -> None:
    res = resolve(
        acct(auth=auth, ws_enabled=True, mode="ctx_pool"), cast(OpenAIWSConfig, ExplodingWS())
    )
    assert (res.transport, res.reason) == ("http", "unknown_auth_type")


@pytest.mark.parametrize("auth", ["bedrock", "other"])
def test_unknown_auth_is_http_even_when_every_switch_says_ws(auth: str) -> None:
    res = resolve(
        acct(auth=auth, ws_enabled=True, mode="passthrough"),
        ws(enabled=True, mode="ctx_pool", apikey_enabled=True, oauth_enabled=True),
    )
    assert res.transport == "http" and res.reason == "unknown_auth_type"


@pytest.mark.parametrize(
    ("account", "config", "cooling_down", "transport", "reason"),
    [
        # defaults: WebSocket, ctx_pool, v2
        (acct(), ws(), False, "ws", "ws_v2_mode_ctx_pool"),
        (acct(auth="oauth"), ws(), False, "ws", "ws_v2_mode_ctx_pool"),
        # force_http: the account's own switch, then the global one
        (acct(force_http=True), ws(), False, "http", "account_force_http"),
        (acct(force_http=True), ws(force_http=True), False, "http", "account_force_http"),
        (acct(), ws(force_http=True), False, "http", "global_force_http"),
        (acct(), ws(force_http=True, enabled=False), False, "http", "global_force_http"),
        # global switch off wins over an account that says yes
        (acct(), ws(enabled=False), False, "http", "global_disabled"),
        (acct(ws_enabled=True), ws(enabled=False), False, "http", "global_disabled"),
        # per-auth switches only affect their own auth type
        (acct(auth="oauth"), ws(oauth_enabled=False), False, "http", "oauth_disabled"),
        (
            acct(auth="apikey"),
            ws(oauth_enabled=False),
            False,
            "ws",
            "ws_v2_mode_ctx_pool",
        ),
        (acct(auth="apikey"), ws(apikey_enabled=False), False, "http", "apikey_disabled"),
        (
            acct(auth="oauth"),
            ws(apikey_enabled=False),
            False,
            "ws",
            "ws_v2_mode_ctx_pool",
        ),
        # the account's own WS switch
        (acct(ws_enabled=False), ws(), False, "http", "account_disabled"),
        (acct(ws_enabled=None), ws(), False, "ws", "ws_v2_mode_ctx_pool"),
        # mode: account override, else the global mode
        (acct(), ws(mode="passthrough"), False, "ws", "ws_v2_mode_passthrough"),
        (acct(mode="passthrough"), ws(), False, "ws", "ws_v2_mode_passthrough"),
        (acct(mode="ctx_pool"), ws(mode="off"), False, "ws", "ws_v2_mode_ctx_pool"),
        (acct(mode="off"), ws(), False, "http", "mode_off"),
        (acct(), ws(mode="off"), False, "http", "mode_off"),
        # cooldown after a policy failure: HTTP
        (acct(), ws(), True, "http", "fallback_cooldown"),
        (acct(mode="passthrough"), ws(), True, "http", "fallback_cooldown"),
        # switches that say HTTP anyway are reported before the cooldown
        (acct(), ws(mode="off"), True, "http", "mode_off"),
        (acct(force_http=True), ws(), True, "http", "account_force_http"),
        # beta version
        (acct(), ws(beta_version="v1"), False, "ws", "ws_v1_mode_ctx_pool"),
    ],
)
def test_resolution_table(
    account: Account,
    config: OpenAIWSConfig,
    cooling_down: bool,
    transport: str,
    reason: str,
) -> None:
    res = resolve(account, config, cooling_down=cooling_down)
    assert (res.transport, res.reason) == (transport, reason)
