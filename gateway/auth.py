"""Client keys: `Authorization: Bearer <key>` mapped to a group.

Keys are compared by SHA-256 digest through one dict lookup, so the time taken does
not depend on how much of a wrong key matches a right one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from gateway.config import ClientKey


@dataclass(frozen=True, slots=True)
class ClientIdentity:
    group: str
    name: str
    key_id: str  # a short, non-secret fingerprint for logs


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class ClientDirectory:
    def __init__(self, clients: list[ClientKey]) -> None:
        self._by_digest: dict[bytes, ClientIdentity] = {}
        for client in clients:
            digest = _digest(client.key)
            self._by_digest[digest] = ClientIdentity(
                group=client.group, name=client.name, key_id=digest[:4].hex()
            )

    def authenticate(self, authorization: str | None) -> ClientIdentity | None:
        if not authorization:
            return None
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        return self._by_digest.get(_digest(token.strip()))
