"""URL schemes and the parsing of cluster and sentinel URLs (no server involved)."""

from __future__ import annotations

import ast

import pytest

from gateway.config import ConfigError, parse_config
from statestore import STORE_URL_SCHEMES, open_store
from statestore.redisstore import RedisStore
from statestore.topology import Topology, parse_topology
from tests.support import REPO_ROOT


def test_cluster_url_lists_seed_nodes_and_credentials() -> None:
    assert parse_topology("redis+cluster://10.0.0.1:7000,10.0.0.2:7001,cache") == Topology(
        kind="cluster", nodes=(("10.0.0.1", 7000), ("10.0.0.2", 7001), ("cache", 6379))
    )
    assert parse_topology("rediss+cluster://app:p%40ss@[::1]:7000/") == Topology(
        kind="cluster", nodes=(("::1", 7000),), tls=True, username="app", password="p@ss"
    )
    assert parse_topology("redis+cluster://:secret@h:1").password == "secret"
    assert parse_topology("redis+cluster://:secret@h:1").username is None


def test_sentinel_url_names_the_service_and_database() -> None:
    assert parse_topology("redis+sentinel://s1:26380,s2/main/3") == Topology(
        kind="sentinel",
        nodes=(("s1", 26380), ("s2", 26379)),
        service_name="main",
        db=3,
    )
    assert parse_topology("REDIS+SENTINEL://s1/main").db == 0


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("redis+cluster://", "names no host:port"),
        ("redis+cluster://h:0", "bad port"),
        ("redis+cluster://h:port", "bad port"),
        ("redis+cluster://:7000", "missing host"),
        ("redis+cluster://h:7000/2", "no database"),
        ("redis+cluster://h:7000?ssl=1", "query strings"),
        ("redis+sentinel://s1:26379", "service_name"),
        ("redis+sentinel://s1:26379/main/x", "not a number"),
        ("redis+sentinel://s1:26379/main/0/extra", "service_name"),
        ("redis+cluster://[::1:7000", "bad node"),
    ],
)
def test_malformed_urls_are_refused_by_open_store(url: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        open_store(url)


def test_every_redis_scheme_opens_a_redis_store_without_dialling() -> None:
    # Port 9 (discard) has no Redis: nothing may connect before the first operation.
    for url in (
        "redis://127.0.0.1:9/0",
        "rediss://127.0.0.1:9/0",
        "unix:///nonexistent.sock",
        "redis+cluster://127.0.0.1:9",
        "rediss+cluster://127.0.0.1:9",
        "redis+sentinel://127.0.0.1:9/svc",
    ):
        store = open_store(url)
        assert isinstance(store, RedisStore)
        assert store.url_scheme == url.split("://")[0]
    with pytest.raises(ValueError, match="redis\\+sentinel://"):
        open_store("rediss+sentinel://h/svc")  # the message lists what is accepted


# The smallest config that starts: one client key and one account.
_MINIMAL = (
    '[[clients]]\nkey = "sk-c"\ngroup = "default"\n[[accounts]]\nid = "a"\napi_key = "sk-a"\n'
)


def _store_config(url: str) -> str:
    return f'{_MINIMAL}[statestore]\nurl = "{url}"\n'


def test_config_accepts_exactly_the_store_schemes() -> None:
    for scheme in STORE_URL_SCHEMES:
        url = f"{scheme}://h:1" if "cluster" in scheme else f"{scheme}://h:1/x"
        assert parse_config(_store_config(url), env={}).statestore.url == url
    with pytest.raises(ConfigError, match="redis\\+cluster://"):
        parse_config(_store_config("redis+shard://h:1"), env={})
    # A malformed node list is a config error that names the problem, not a traceback later.
    with pytest.raises(ConfigError, match=r"statestore\.url: bad port 'port'"):
        parse_config(_store_config("redis+cluster://h:port"), env={})
    with pytest.raises(ConfigError, match=r"statestore\.url: .*service_name"):
        parse_config(_store_config("redis+sentinel://s1:26379"), env={})


def _statestore_imports() -> dict[str, set[str]]:
    """Module -> the statestore modules it imports, nested imports included."""
    graph: dict[str, set[str]] = {}
    for path in sorted((REPO_ROOT / "statestore").glob("*.py")):
        name = "statestore" if path.stem == "__init__" else f"statestore.{path.stem}"
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
        graph[name] = {m for m in found if m.startswith("statestore.")}
    return graph


def test_statestore_modules_import_each_other_without_a_cycle() -> None:
    graph = _statestore_imports()
    assert "statestore.redisstore" in graph["statestore.open"]  # the walk does see imports
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, f"import cycle: {' -> '.join((*path, module))}"
        if module in done:
            return
        for imported in graph.get(module, set()):
            visit(imported, (*path, module))
        done.add(module)

    for module in graph:
        visit(module, ())
    # The protocol imports no backend (only the transcript record types).
    assert graph["statestore.base"] <= {"statestore.transcripts"}
