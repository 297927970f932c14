"""Headers sent upstream: account credentials plus the Codex headers worth forwarding."""

from __future__ import annotations

from collections.abc import Mapping

from gateway.config import Account

# Forwarded verbatim when the client sent them (Codex's session and turn headers). Never the
# client's Authorization.
FORWARDED_CLIENT_HEADERS = (
    "session-id",
    "session_id",
    "thread-id",
    "x-client-request-id",
    "x-codex-window-id",
    "x-codex-turn-metadata",
    "x-codex-beta-features",
    "x-codex-turn-state",
    "x-codex-parent-thread-id",
    "x-openai-subagent",
    "originator",
    "user-agent",
    "accept-language",
)
SESSION_HEADERS = ("session-id", "session_id", "thread-id", "x-client-request-id")


def account_headers(account: Account, beta: str) -> list[tuple[str, str]]:
    headers = [("authorization", f"Bearer {account.api_key}"), ("openai-beta", beta)]
    headers.extend((k.lower(), v) for k, v in account.extra_headers.items())
    return headers


def forwarded_headers(client_headers: Mapping[str, str]) -> list[tuple[str, str]]:
    return [
        (name, client_headers[name]) for name in FORWARDED_CLIENT_HEADERS if name in client_headers
    ]


def session_key(client_headers: Mapping[str, str]) -> str | None:
    """The client's session: session-id / session_id, else thread-id, else x-client-request-id."""
    for name in SESSION_HEADERS:
        value = client_headers.get(name)
        if value:
            return value
    return None
