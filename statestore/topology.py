"""Parse a multi-node state store URL: ``redis+cluster://`` and ``redis+sentinel://``.

``redis+cluster://[user:password@]host:port[,host:port...]`` (``rediss+cluster://`` for TLS)
lists seed nodes of a Redis (or Valkey) Cluster; the rest of the cluster is discovered.
``redis+sentinel://[user:password@]host:port[,host:port...]/service_name[/db]`` lists the
sentinels watching ``service_name``; the credentials are those of the Redis servers.
"""

from __future__ import annotations

from urllib.parse import unquote

import msgspec

from statestore.schemes import (
    CLUSTER_SCHEMES,
    SENTINEL_SCHEMES,
    STORE_URL_SCHEMES,
    STORE_URL_SCHEMES_TEXT,
    url_scheme_of,
)

DEFAULT_REDIS_PORT = 6379
DEFAULT_SENTINEL_PORT = 26379


class Topology(msgspec.Struct, frozen=True, kw_only=True):
    kind: str  # "cluster" | "sentinel"
    nodes: tuple[tuple[str, int], ...]
    tls: bool = False
    username: str | None = None
    password: str | None = None
    service_name: str = ""  # sentinel only
    db: int = 0  # sentinel only (a cluster has db 0 only)


def _host_port(part: str, default_port: int, url: str) -> tuple[str, int]:
    if part.startswith("["):  # [ipv6]:port
        host, sep, rest = part[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"bad node {part!r} in state store URL {url!r}")
        port_text = rest[1:]
    else:
        host, _, port_text = part.rpartition(":") if ":" in part else (part, "", "")
    if not host:
        raise ValueError(f"missing host in {part!r} of state store URL {url!r}")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"bad port {port_text!r} in state store URL {url!r}")
    return host, int(port_text)


def parse_topology(url: str) -> Topology:
    """A cluster or sentinel URL into its parts; ValueError names what is wrong."""
    scheme = url_scheme_of(url)
    if scheme not in CLUSTER_SCHEMES + SENTINEL_SCHEMES:
        raise ValueError(f"{url!r} is not a redis+cluster:// or redis+sentinel:// URL")
    rest = url.split("://", 1)[1]
    if "?" in rest or "#" in rest:
        raise ValueError(f"state store URL {url!r}: query strings are not supported")
    authority, _, path = rest.partition("/")
    username = password = None
    if "@" in authority:
        userinfo, _, authority = authority.rpartition("@")
        user_text, has_password, password_text = userinfo.partition(":")
        username = unquote(user_text) or None
        password = unquote(password_text) if has_password else None
    sentinel = scheme in SENTINEL_SCHEMES
    default_port = DEFAULT_SENTINEL_PORT if sentinel else DEFAULT_REDIS_PORT
    parts = [p for p in authority.split(",") if p]
    if not parts:
        raise ValueError(f"state store URL {url!r} names no host:port")
    nodes = tuple(_host_port(p, default_port, url) for p in parts)
    if not sentinel:
        if path.strip("/"):
            raise ValueError(f"state store URL {url!r}: a cluster has no database or path")
        return Topology(
            kind="cluster",
            nodes=nodes,
            tls=scheme.startswith("rediss"),
            username=username,
            password=password,
        )
    segments = path.strip("/").split("/") if path.strip("/") else []
    if not segments or len(segments) > 2:
        raise ValueError(f"state store URL {url!r}: expected /service_name[/db] after the hosts")
    db_text = segments[1] if len(segments) == 2 else "0"
    if not db_text.isdigit():
        raise ValueError(f"state store URL {url!r}: database {db_text!r} is not a number")
    return Topology(
        kind="sentinel",
        nodes=nodes,
        username=username,
        password=password,
        service_name=unquote(segments[0]),
        db=int(db_text),
    )


def store_url_problem(url: str) -> str | None:
    """What is wrong with a ``statestore.url``, or None: for config validation."""
    if url_scheme_of(url) not in STORE_URL_SCHEMES:
        return f"scheme must be one of {STORE_URL_SCHEMES_TEXT}"
    if url_scheme_of(url) in CLUSTER_SCHEMES + SENTINEL_SCHEMES:
        try:
            parse_topology(url)
        except ValueError as exc:
            return str(exc)
    return None
