"""The state store URL schemes, in one place (the config validation imports them)."""

from __future__ import annotations

MEMORY_SCHEMES = ("memory",)
SINGLE_NODE_SCHEMES = ("redis", "rediss", "unix")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
SENTINEL_SCHEMES = ("redis+sentinel",)
REDIS_SCHEMES = SINGLE_NODE_SCHEMES + CLUSTER_SCHEMES + SENTINEL_SCHEMES
STORE_URL_SCHEMES = MEMORY_SCHEMES + REDIS_SCHEMES
# For error messages: "memory://, redis://, ..."
STORE_URL_SCHEMES_TEXT = ", ".join(f"{scheme}://" for scheme in STORE_URL_SCHEMES)


def url_scheme_of(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else ""
