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
    reason: str  # why: a fallback metric label, and the turn's log field


COOLDOWN = Resolution("http", "fallback_cooldown")


def resolve(account: Account, ws: OpenAIWSConfig, *, cooling_down: bool = False) -> Resolution:
    """First hit wins, in the reference's order; unknown auth never reads the WS switches."""
    if account.auth not in KNOWN_AUTH:
        return Resolution("http", "unknown_auth_type")
    if account.force_http:
        return Resolution("http", "account_force_http")
    if ws.force_http:
        return Resolution("http", "global_force_http")
    if not ws.enabled:
        return Resolution("http", "global_disabled")
    if account.auth == "oauth" and not ws.oauth_enabled:
        return Resolution("http", "oauth_disabled")
    if account.auth == "apikey" and not ws.apikey_enabled:
        return Resolution("http", "apikey_disabled")
    if account.ws_enabled is False:
        return Resolution("http", "account_disabled")
    mode = account.mode or ws.mode
    if mode == "off":
        return Resolution("http", "mode_off")
    if cooling_down:
        return COOLDOWN
    return Resolution("ws", f"ws_{ws.beta_version}_mode_{mode}")
