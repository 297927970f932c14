"""Protocol resolver: WebSocket or HTTP for one account and request. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from gateway.config import Account, OpenAIWSConfig

BETA_V1 = "responses_websockets=2026-02-04"
BETA_V2 = "responses_websockets=2026-02-06"
KNOWN_AUTH = ("apikey", "oauth")


@dataclass(frozen=True, slots=True)
class Resolution:
    transport: Literal["ws", "http"]
    mode: Literal["ctx_pool", "passthrough", "off"]
    reason: str
    beta: str = BETA_V2


def resolve(account: Account, ws: OpenAIWSConfig, *, cooling_down: bool = False) -> Resolution:
    """First hit wins, in the reference's order; unknown auth never reads the WS switches."""
    if account.auth not in KNOWN_AUTH:
        return Resolution("http", "off", "unknown_auth_type")
    if account.force_http:
        return Resolution("http", "off", "account_force_http")
    if ws.force_http:
        return Resolution("http", "off", "global_force_http")
    if not ws.enabled:
        return Resolution("http", "off", "global_disabled")
    if account.auth == "oauth" and not ws.oauth_enabled:
        return Resolution("http", "off", "oauth_disabled")
    if account.auth == "apikey" and not ws.apikey_enabled:
        return Resolution("http", "off", "apikey_disabled")
    if account.ws_enabled is False:
        return Resolution("http", "off", "account_disabled")
    mode = account.mode or ws.mode
    if mode == "off":
        return Resolution("http", "off", "mode_off")
    if cooling_down:
        return Resolution("http", mode, "fallback_cooldown")
    beta = BETA_V1 if ws.beta_version == "v1" else BETA_V2
    return Resolution("ws", mode, f"ws_{ws.beta_version}_mode_{mode}", beta)


def client_beta_ok(value: str | None) -> bool:
    """Clients may send either beta value (or none); anything else is still served as v2."""
    return value is None or value in (BETA_V1, BETA_V2) or "responses_websockets" in value
