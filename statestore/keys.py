"""Redis key layout.

``<prefix>:{r:<group>:<response_id>}:acct`` / ``:pend`` / ``:stored`` (only for a
response the upstream stored) and
``<prefix>:{s:<group>:<session>}:last`` / ``:ts`` and, for an account's published
cooldown deadline, ``<prefix>:{acct:<group>}:<account>:until``. The ``{hash-tag}`` puts
every key of one response (or of one session, or every account of one group) in one Redis
Cluster slot, so each group of keys can be read with one MGET. Group, response id and session key are escaped so a ``:`` can't
make two tenants' keys collide and a ``}`` can't end the hash tag early.
"""

from __future__ import annotations

_ESCAPES = str.maketrans({"%": "%25", ":": "%3A", "{": "%7B", "}": "%7D"})


def escape_part(part: str) -> str:
    # Fast path: ids and group names almost never contain these.
    if "%" in part or ":" in part or "{" in part or "}" in part:
        return part.translate(_ESCAPES)
    return part


class RedisKeys:
    __slots__ = ("prefix",)

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def response_base(self, group: str, response_id: str) -> str:
        return f"{self.prefix}:{{r:{escape_part(group)}:{escape_part(response_id)}}}"

    def session_base(self, group: str, session_key: str) -> str:
        return f"{self.prefix}:{{s:{escape_part(group)}:{escape_part(session_key)}}}"

    def response(self, group: str, response_id: str) -> tuple[str, str]:
        """(account key, pending-calls key)."""
        base = self.response_base(group, response_id)
        return base + ":acct", base + ":pend"

    def stored(self, group: str, response_id: str) -> str:
        """Present ("1") when the upstream stored the response; same slot as the others."""
        return self.response_base(group, response_id) + ":stored"

    def transcript(self, group: str, session_key: str) -> str:
        """The session's durable transcript (a list of deltas), in the session's slot."""
        return self.session_base(group, session_key) + ":tx"

    def session(self, group: str, session_key: str) -> tuple[str, str]:
        """(last-response key, turn-state key)."""
        base = self.session_base(group, session_key)
        return base + ":last", base + ":ts"

    def account_until(self, group: str, account_id: str) -> str:
        """An account's cooldown deadline; every account of a group shares one slot."""
        return f"{self.prefix}:{{acct:{escape_part(group)}}}:{escape_part(account_id)}:until"
