"""gateway.resolver: WebSocket or HTTP per account and request, in the reference's order."""

from __future__ import annotations

from typing import Any, cast

import pytest

from gateway.config import Account, OpenAIWSConfig
from gateway.resolver import BETA_V1, BETA_V2, client_beta_ok, resolve


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
    assert (res.transport, res.mode, res.reason) == ("http", "off", "unknown_auth_type")


@pytest.mark.parametrize("auth", ["bedrock", "other"])
def test_unknown_auth_is_http_even_when_every_switch_says_ws(auth: str) -> None:
    res = resolve(
        acct(auth=auth, ws_enabled=True, mode="passthrough"),
        ws(enabled=True, mode="ctx_pool", apikey_enabled=True, oauth_enabled=True),
    )
    assert res.transport == "http" and res.reason == "unknown_auth_type"


@pytest.mark.parametrize(
    ("account", "config", "cooling_down", "transport", "mode", "reason"),
    [
        # defaults: WebSocket, ctx_pool, v2
        (acct(), ws(), False, "ws", "ctx_pool", "ws_v2_mode_ctx_pool"),
        (acct(auth="oauth"), ws(), False, "ws", "ctx_pool", "ws_v2_mode_ctx_pool"),
        # force_http: the account's own switch, then the global one
        (acct(force_http=True), ws(), False, "http", "off", "account_force_http"),
        (acct(force_http=True), ws(force_http=True), False, "http", "off", "account_force_http"),
        (acct(), ws(force_http=True), False, "http", "off", "global_force_http"),
        (acct(), ws(force_http=True, enabled=False), False, "http", "off", "global_force_http"),
        # global switch off wins over an account that says yes
        (acct(), ws(enabled=False), False, "http", "off", "global_disabled"),
        (acct(ws_enabled=True), ws(enabled=False), False, "http", "off", "global_disabled"),
        # per-auth switches only affect their own auth type
        (acct(auth="oauth"), ws(oauth_enabled=False), False, "http", "off", "oauth_disabled"),
        (
            acct(auth="apikey"),
            ws(oauth_enabled=False),
            False,
            "ws",
            "ctx_pool",
            "ws_v2_mode_ctx_pool",
        ),
        (acct(auth="apikey"), ws(apikey_enabled=False), False, "http", "off", "apikey_disabled"),
        (
            acct(auth="oauth"),
            ws(apikey_enabled=False),
            False,
            "ws",
            "ctx_pool",
            "ws_v2_mode_ctx_pool",
        ),
        # the account's own WS switch
        (acct(ws_enabled=False), ws(), False, "http", "off", "account_disabled"),
        (acct(ws_enabled=None), ws(), False, "ws", "ctx_pool", "ws_v2_mode_ctx_pool"),
        # mode: account override, else the global mode
        (acct(), ws(mode="passthrough"), False, "ws", "passthrough", "ws_v2_mode_passthrough"),
        (acct(mode="passthrough"), ws(), False, "ws", "passthrough", "ws_v2_mode_passthrough"),
        (acct(mode="ctx_pool"), ws(mode="off"), False, "ws", "ctx_pool", "ws_v2_mode_ctx_pool"),
        (acct(mode="off"), ws(), False, "http", "off", "mode_off"),
        (acct(), ws(mode="off"), False, "http", "off", "mode_off"),
        # cooldown after a policy failure: HTTP, the mode kept for when WS comes back
        (acct(), ws(), True, "http", "ctx_pool", "fallback_cooldown"),
        (acct(mode="passthrough"), ws(), True, "http", "passthrough", "fallback_cooldown"),
        # switches that say HTTP anyway are reported before the cooldown
        (acct(), ws(mode="off"), True, "http", "off", "mode_off"),
        (acct(force_http=True), ws(), True, "http", "off", "account_force_http"),
        # beta version
        (acct(), ws(beta_version="v1"), False, "ws", "ctx_pool", "ws_v1_mode_ctx_pool"),
    ],
)
def test_resolution_table(
    account: Account,
    config: OpenAIWSConfig,
    cooling_down: bool,
    transport: str,
    mode: str,
    reason: str,
) -> None:
    res = resolve(account, config, cooling_down=cooling_down)
    assert (res.transport, res.mode, res.reason) == (transport, mode, reason)


def test_beta_value_follows_beta_version() -> None:
    assert resolve(acct(), ws(beta_version="v1")).beta == "responses_websockets=2026-02-04"
    assert resolve(acct(), ws(beta_version="v2")).beta == "responses_websockets=2026-02-06"
    assert resolve(acct(), ws()).beta == "responses_websockets=2026-02-06"


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        (None, True),
        ("responses_websockets=2026-02-04", True),
        ("responses_websockets=2026-02-06", True),
        ("responses_websockets=2027-01-01", True),
        ("assistants=v2", False),
        ("", False),
    ],
)
def test_client_beta_ok(value: str | None, ok: bool) -> None:
    assert client_beta_ok(value) is ok
