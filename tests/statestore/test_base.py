"""URL dispatch, config checks and the record types."""

from __future__ import annotations

import msgspec
import pytest

from statestore import BindOutcome, Continuation, NoHooks, StoreHooks, TurnBinding, open_store
from statestore.memory import MemoryStore
from statestore.redisstore import RedisStore
from tests.support import free_port


def test_memory_url_picks_the_memory_backend() -> None:
    store = open_store("memory://")
    assert isinstance(store, MemoryStore)
    assert store.url_scheme == "memory"


@pytest.mark.parametrize(
    ("url", "scheme"),
    [
        ("redis://127.0.0.1:1/0", "redis"),
        ("rediss://127.0.0.1:1/0", "rediss"),
        ("unix:///tmp/nowhere.sock", "unix"),
    ],
)
async def test_redis_urls_pick_the_redis_backend_without_dialling(url: str, scheme: str) -> None:
    store = open_store(url)  # nothing listens on port 1: constructing must not dial
    assert isinstance(store, RedisStore)
    assert store.url_scheme == scheme
    assert not store.pool._in_use_connections and not store.pool._available_connections
    await store.aclose()


def test_unknown_scheme_is_named_in_the_error() -> None:
    with pytest.raises(ValueError, match="'mongodb'"):
        open_store("mongodb://x")
    with pytest.raises(ValueError, match="scheme ''"):
        open_store("no-scheme-at-all")


def test_invalid_settings_are_rejected() -> None:
    with pytest.raises(ValueError, match="positive"):
        open_store("memory://", op_timeout_ms=0)
    with pytest.raises(ValueError, match="positive"):
        open_store("redis://127.0.0.1:1", pool_max_connections=0)
    with pytest.raises(ValueError, match="hash tags"):
        open_store("redis://127.0.0.1:1", key_prefix="a{b}")


def test_redis_pool_is_blocking_and_bounded_by_the_op_deadline() -> None:
    store = open_store("redis://127.0.0.1:1/0", op_timeout_ms=120, pool_max_connections=7)
    assert isinstance(store, RedisStore)
    pool = store.pool
    assert type(pool).__name__ == "BlockingConnectionPool"
    assert pool.max_connections == 7
    assert pool.timeout == pytest.approx(0.12)
    kwargs = pool.connection_kwargs
    assert kwargs["socket_timeout"] == pytest.approx(0.12)
    assert kwargs["socket_connect_timeout"] == pytest.approx(0.12)
    assert kwargs["retry"].get_retries() == 0  # a retry would overrun the deadline


def test_redis_connections_use_hiredis() -> None:
    from redis.utils import HIREDIS_AVAILABLE

    assert HIREDIS_AVAILABLE
    store = open_store("redis://127.0.0.1:1/0")
    assert isinstance(store, RedisStore)
    conn = store.pool.make_connection()  # type: ignore[no-untyped-call]
    assert "Hiredis" in type(conn._parser).__name__
    assert conn.driver_info is None  # no CLIENT SETINFO round trips when (re)connecting


def test_records_defaults_and_immutability() -> None:
    b = TurnBinding(group="g", account_id="a", response_id="r")
    assert b.session_key is None and b.pending_calls == {} and b.conn_id is None
    with pytest.raises(AttributeError):
        b.account_id = "other"  # type: ignore[misc]
    c = Continuation(
        account_id=None,
        pending_calls=None,
        session_last_response_id=None,
        turn_state=None,
        conn_id=None,
        degraded=False,
        source="miss",
    )
    assert msgspec.to_builtins(c)["source"] == "miss"
    assert BindOutcome(ok=True) == BindOutcome(ok=True, degraded=False, error=None)


async def test_default_hooks_accept_every_callback() -> None:
    hooks: StoreHooks = NoHooks()  # structurally a StoreHooks (mypy checks this line)
    store = open_store(f"redis://127.0.0.1:{free_port()}/0", hooks=hooks)  # nothing listens
    outcome = await store.bind_turn(TurnBinding(group="g", account_id="a", response_id="r"))
    assert outcome.degraded  # op and bind-failure callbacks ran through the no-op hooks
    assert (await store.lookup("g", response_id="r", session_key=None)).account_id == "a"
    await store.aclose()
